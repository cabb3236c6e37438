"""What a benchmark leaves behind: ``results.json``, ``bench.png`` and ``recommended.yaml``.

``recommended.yaml`` has the ``endpoint`` and ``engine`` sections of the
``odie generate`` config (``odie_async.pipeline.config``), so ``--config``
takes it as it is. rpm/tpm stay 0 (unlimited) unless the endpoint answered 429:
then they are set just under the highest rate it took without one.
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import structlog
import yaml

from ..exceptions import OutputError
from ..files import write_atomic

log = structlog.get_logger(__name__)

RATE_MARGIN = 0.95


def recommended_config(results: dict) -> dict:
    """The ``{endpoint: {...}, engine: {concurrency, rpm, tpm}}`` settings the results call for."""
    knee = results.get("recommended") or {}
    if results.get("embedded"):  # served for the bench only: null serves it again for the run
        endpoint = {"base_url": None, "model": None}
    else:
        endpoint = {"base_url": results["base_url"], "model": results.get("model")}
    if results.get("api_key_env"):
        endpoint["api_key_env"] = results["api_key_env"]
    rpm = tpm = 0
    points = results["points"]
    if any(p["rate_limited_429"] for p in points):
        clean = [p for p in points if not p["rate_limited_429"] and p["requests_per_s"] > 0] or points
        top = max(clean, key=lambda p: p["requests_per_s"])
        rpm = math.floor(top["requests_per_s"] * 60 * RATE_MARGIN)
        per_request = (top["mean_prompt_tokens"] or 0) + top["mean_output_tokens"]
        tpm = math.floor(top["requests_per_s"] * per_request * 60 * RATE_MARGIN)
    return {"endpoint": endpoint, "engine": {"concurrency": knee.get("concurrency", 1), "rpm": rpm, "tpm": tpm}}


def pool_config(benches: list[dict]) -> dict:
    """One ``endpoints:`` list from the benches of a pool's endpoints: each at its own knee and limits.

    ``odie batch --config`` takes it as it is; ``engine.concurrency`` is the sum of the knees, so
    the run as a whole may keep every endpoint at its own.
    """
    endpoints = []
    for number, results in enumerate(benches, 1):
        own = recommended_config(results)
        entry = {"name": results.get("name") or f"endpoint-{number}", **own["endpoint"],
                 "max_concurrency": own["engine"]["concurrency"]}
        entry.update({k: own["engine"][k] for k in ("rpm", "tpm") if own["engine"][k]})
        endpoints.append(entry)
    total = sum(e["max_concurrency"] for e in endpoints)
    return {"endpoints": endpoints, "engine": {"concurrency": total}}


def write_pool(benches: list[dict], out_dir: Path) -> Path:
    """``recommended.yaml`` for a pool: every endpoint's knee, in one file ``--config`` takes."""
    lines = [f"# odie bench of {len(benches)} endpoints ({benches[0]['workload']})"]
    for results in benches:
        knee = results.get("recommended")
        found = f"knee at {knee['point']['label']}, {knee['point']['requests_per_s']:,.1f} req/s" if knee else "no knee"
        lines.append(f"# {results.get('name')}: {results['base_url']}: {found}")
    lines.append("# use with: odie batch --config THIS_FILE ... (each endpoint a lane at its own max_concurrency)")
    path = out_dir / "recommended.yaml"
    text = "\n".join(lines) + "\n" + yaml.safe_dump(pool_config(benches), sort_keys=False)
    _write(path, text.encode("utf-8"))
    return path


def _yaml_header(results: dict) -> str:
    knee = results.get("recommended")
    lines = [f"# odie bench of {results['base_url']} ({results['workload']}), {results['finished_at']}"]
    if knee:
        p = knee["point"]
        lines.append(f"# knee: {p['label']}: {p['requests_per_s']:,.1f} req/s, {p['output_tokens_per_s']:,.0f} output tok/s, "
                     f"latency p95 {p['latency_ms']['p95']:,.0f} ms (best seen {knee['max_requests_per_s']:,.1f} req/s)")
    else:
        lines.append("# no load level met the SLO without errors: concurrency 1 is a floor, not a finding")
    if not any(p["rate_limited_429"] for p in results["points"]):
        lines.append("# no 429s seen: rpm/tpm 0 leave the rate to the concurrency")
    lines.append("# use with: odie batch --config THIS_FILE ... or odie generate --config THIS_FILE")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir: Path) -> Path:
    """Write ``results.json`` whole (a viewer reading it sees the old points or the new ones)."""
    path = out_dir / "results.json"
    _write(path, orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def _write(path: Path, data: bytes) -> None:
    """One file of the report, whole; ``OutputError`` naming it when it cannot be written (disk full)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError as exc:
        raise OutputError(str(path), exc) from exc


def write(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write the three files into ``out_dir``; return their paths (the plot only when it could be drawn)."""
    paths = {"results": out_dir / "results.json", "recommended": out_dir / "recommended.yaml"}
    write_results(results, out_dir)
    config = yaml.safe_dump(recommended_config(results), sort_keys=False)
    _write(paths["recommended"], (_yaml_header(results) + config).encode("utf-8"))
    plot_path = out_dir / "bench.png"
    if plot(results, plot_path):
        paths["plot"] = plot_path
    return paths


def plot(results: dict, path: Path) -> bool:
    """Throughput and latency against load, the knee marked; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'odie-async[ml]'): no plot drawn")
        return False
    points = results["points"]
    xs = [p["load"] for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    top.plot(xs, [p["requests_per_s"] for p in points], "o-", color="tab:blue", label="requests/s")
    top.set_ylabel("requests/s", color="tab:blue")
    tokens = top.twinx()
    tokens.plot(xs, [p["output_tokens_per_s"] for p in points], "s--", color="tab:green", alpha=0.7)
    tokens.set_ylabel("output tokens/s", color="tab:green")
    for key, style in (("latency_ms", "o-"), ("ttft_ms", "^-")):
        for q, alpha in (("p50", 0.6), ("p95", 1.0)):
            ys = [(p[key] or {}).get(q) for p in points]
            if any(y is not None for y in ys):
                bottom.plot(xs, [y if y is not None else math.nan for y in ys], style, alpha=alpha,
                            label=f"{key[:-3]} {q}")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("concurrency" if points and points[0]["kind"] == "concurrency" else "requests/s sent")
    bottom.legend(fontsize=8)
    if points and points[0]["kind"] == "concurrency" and max(xs) / max(min(xs), 1) >= 8:
        bottom.set_xscale("log", base=2)
        bottom.set_xticks(xs, [f"{x:g}" for x in xs], fontsize=8)
        bottom.minorticks_off()
    knee = results.get("recommended")
    if knee:
        x = knee["point"]["load"]
        for axis in (top, bottom):
            axis.axvline(x, color="tab:red", linestyle=":")
        right = x >= max(xs) / 2 if bottom.get_xscale() == "linear" else x >= (max(xs) * min(xs)) ** 0.5
        top.annotate(f"knee: {knee['point']['label']}", (x, knee["point"]["requests_per_s"]),
                     textcoords="offset points", xytext=(-6 if right else 6, -14), color="tab:red", fontsize=8,
                     ha="right" if right else "left")  # inside the plot, clear of the right-hand axis
    title = f"odie bench: {results['base_url']}\n{results['workload']}".replace("$", r"\$")  # no mathtext
    top.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise OutputError(str(path), exc) from exc
    finally:
        plt.close(fig)
    return True
