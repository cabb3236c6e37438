"""The pure parts of the peer comparison: inputs, the mock's request log, outputs, accounting, the table.

Everything here works on files and lists, with no processes or network, so it is
unit-tested in ``tests/test_bench_peers.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson

from odie_async.endpoints.mock_server import prompt_digest

MAX_TOKENS = 16


def prompt_of(i: int) -> str:
    """The unique short prompt of record ``i``."""
    return f"List the entities in sentence {i}."


def digest(prompt: str) -> str:
    """The mock's log digest of a request whose one message is ``prompt``."""
    return prompt_digest({"messages": [{"role": "user", "content": prompt}]})


def write_input(path: Path, n: int) -> dict[str, str]:
    """Write ``n`` Batch API chat requests to ``path``; return {prompt digest: custom_id}."""
    ids = {}
    with open(path, "wb") as handle:
        for i in range(n):
            body = {"model": "mock-model", "messages": [{"role": "user", "content": prompt_of(i)}], "max_tokens": MAX_TOKENS}
            line = {"custom_id": f"rec-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            handle.write(orjson.dumps(line) + b"\n")
            ids[digest(prompt_of(i))] = f"rec-{i}"
    return ids


@dataclass(frozen=True, slots=True)
class Hit:
    """One completion request as the mock logged it."""

    t: float
    digest: str
    outcome: str  # "200", "429" or "fault_<kind>"


def read_log(path: Path) -> list[Hit]:
    """The mock's request log; a torn last line (the mock was still writing) is skipped."""
    hits = []
    if not path.exists():
        return hits
    for line in path.read_text(encoding="ascii").splitlines():
        parts = line.split(" ")
        if len(parts) == 3:
            hits.append(Hit(float(parts[0]), parts[1], parts[2]))
    return hits


def answered_count(path: Path, inputs: dict[str, str]) -> int:
    """Distinct input records answered 200 so far (polled while a contender runs)."""
    return len({h.digest for h in read_log(path) if h.outcome == "200" and h.digest in inputs})


def read_output(path: Path, fmt: str) -> Counter:
    """custom_id → number of answered rows in a contender's output.

    ``fmt`` is ``batch`` (OpenAI Batch API output lines), ``jsonl`` (``{"custom_id",
    "content"}`` lines) or ``json`` (one JSON list of such objects). Rows without
    content, and unreadable files or lines, count as nothing answered.
    """
    counts: Counter = Counter()
    if not path.exists():
        return counts
    raw = path.read_bytes()
    if fmt == "json":
        try:
            rows = orjson.loads(raw) if raw.strip() else []
        except orjson.JSONDecodeError:
            return counts
    else:
        rows = []
        for line in raw.splitlines():
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    for row in rows:
        if _content(row, fmt):
            counts[row["custom_id"]] += 1
    return counts


def _content(row: dict, fmt: str) -> str | None:
    if fmt != "batch":
        return row.get("content")
    response = row.get("response") or {}
    if response.get("status_code") != 200:
        return None
    choices = (response.get("body") or {}).get("choices") or [{}]
    return (choices[0].get("message") or {}).get("content")


def account(hits: list[Hit], inputs: dict[str, str], output: Counter) -> dict:
    """Requests, answers, 429s and faults per the mock; records lost and duplicated per the output.

    ``answered_twice``: records the mock answered 200 more than once (paid for again);
    ``lost``: input records with no answered row in the output; ``duplicate_rows``:
    answered rows beyond the first for a record.
    """
    outcomes = Counter(h.outcome for h in hits if h.digest in inputs)
    ok = Counter(h.digest for h in hits if h.outcome == "200" and h.digest in inputs)
    return {
        "requests": sum(outcomes.values()),
        "foreign_requests": sum(1 for h in hits if h.digest not in inputs),
        "answered_200": outcomes["200"],
        "answered_429": outcomes["429"],
        "faults": sum(n for k, n in outcomes.items() if k.startswith("fault_")),
        "records_answered": len(ok),
        "answered_twice": sum(1 for n in ok.values() if n > 1),
        "lost": sum(1 for cid in inputs.values() if output[cid] == 0),
        "duplicate_rows": sum(n - 1 for n in output.values() if n > 1),
    }


def resent(first: list[Hit], second: list[Hit], inputs: dict[str, str]) -> dict:
    """What a rerun sent again: requests of the second run for records the first run had answered."""
    done = {h.digest for h in first if h.outcome == "200" and h.digest in inputs}
    again = [h for h in second if h.digest in inputs]
    return {
        "answered_before": len(done),
        "rerun_requests": len(again),
        "rerun_requests_for_answered": sum(1 for h in again if h.digest in done),
        "rerun_records_resent": len({h.digest for h in again if h.digest in done}),
    }


def window(hits: list[Hit], inputs: dict[str, str], latency_s: float = 0.0) -> float:
    """Seconds from the contender's first request to its last answer (that answer's latency added)."""
    mine = [h for h in hits if h.digest in inputs]
    ok = [h.t for h in mine if h.outcome == "200"]
    if len(ok) < 2:
        return 0.0
    return max(ok) + latency_s - min(h.t for h in mine)


def rate(hits: list[Hit], inputs: dict[str, str], latency_s: float = 0.0) -> float:
    """Answers per second over the contender's ``window``."""
    span = window(hits, inputs, latency_s)
    return sum(1 for h in hits if h.outcome == "200" and h.digest in inputs) / span if span > 0 else 0.0


def limit_share(answered: int, window_s: float, rpm: float) -> float:
    """Answers over the most the mock's RPM bucket allows in ``window_s``: one second's burst plus the rate."""
    per_s = rpm / 60.0
    return answered / (per_s * (window_s + 1.0)) if window_s > 0 else 0.0


def series(hits: list[Hit], inputs: dict[str, str], bin_s: float = 1.0) -> list[int]:
    """Answers (200s) per ``bin_s`` from the contender's first request: throughput over time."""
    mine = [h for h in hits if h.digest in inputs]
    if not mine:
        return []
    start = min(h.t for h in mine)
    bins = [0] * (int((max(h.t for h in mine) - start) / bin_s) + 1)
    for h in mine:
        if h.outcome == "200":
            bins[int((h.t - start) / bin_s)] += 1
    return bins


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def cells(row: dict, scenarios: dict) -> list[str]:
    """The table cells of one contender's results (``–`` where a scenario was not run)."""
    out = []
    for key, cell in (("overhead", _overhead), ("overhead", _cpu), ("latency", _latency), ("ratelimit", _share),
                      ("ratelimit", _share_429), ("faults", _faults), ("interrupt", _interrupt)):
        out.append(cell(row[key], scenarios[key]) if key in row else "–")
    return out


def _capped(s: dict, spec: dict) -> str:
    outcome = s.get("outcome") or {}
    return f" (capped at {spec['cap_s']} s: {s['records_answered']:,} of {spec['n']:,})" if outcome.get("capped") else ""


def _overhead(s: dict, spec: dict) -> str:
    return f"{s['requests_per_s']:,.0f} (e2e {s['end_to_end_per_s']:,.0f}){_capped(s, spec)}"


def _cpu(s: dict, spec: dict) -> str:
    return "–" if s.get("cpu_us_per_request") is None else f"{s['cpu_us_per_request']:,.0f}"


def _latency(s: dict, spec: dict) -> str:
    bound = spec["concurrency"] / spec["latency_s"]
    return f"{s['requests_per_s']:,.0f} ({_pct(s['requests_per_s'] / bound)} of bound){_capped(s, spec)}"


def _share(s: dict, spec: dict) -> str:
    return f"{_pct(s['limit_share'])}{_incomplete(s, spec)}{_capped(s, spec)}"


def _incomplete(s: dict, spec: dict) -> str:
    """A note when records are missing from the output of a run that was not capped."""
    kept = spec["n"] - s["lost"]
    if kept >= spec["n"] or (s.get("outcome") or {}).get("capped"):
        return ""
    return f", {kept:,} of {spec['n']:,} in its output"


def _share_429(s: dict, spec: dict) -> str:
    return _pct(s["answered_429"] / s["requests"]) if s["requests"] else "–"


def _faults(s: dict, spec: dict) -> str:
    capped = _capped(s, spec)
    if capped:
        return "unfinished" + capped
    stopped = " (stopped itself early)" if "error:" in (s.get("outcome") or {}).get("stderr_tail", "") else ""
    return f"{s['lost']:,} lost, {s['duplicate_rows']:,} duplicated, {s['answered_twice']:,} paid twice{stopped}"


def _interrupt(s: dict, spec: dict) -> str:
    first, second = s["first"], s["second"]
    if s["answered_before"] >= spec["n"]:
        return f"Ctrl-C did not stop it: all {spec['n']:,} answered before it exited"
    text = f"{s['rerun_records_resent']:,} of {s['answered_before']:,}"
    if s["answered_before"] and s["rerun_records_resent"] == s["answered_before"]:
        text += " (no resume)"
    if not first.get("at_half", True):
        text += f"; Ctrl-C at the {spec['cap_s']} s cap"
    if first.get("killed"):
        text += "; ignored Ctrl-C, killed"
    if second.get("capped"):
        text += f"; rerun capped at {spec['cap_s']} s"
    if s["lost"] or s["duplicate_rows"]:
        text += f"; then {s['lost']} lost, {s['duplicate_rows']} duplicated"
    return text


HEADER = ["contender", "zero latency, conc 256: req/s", "client CPU µs/req", "500 ms latency, conc 500: req/s",
          "rate limit: share achieved", "429s", "20 % faults", "Ctrl-C at half: rerun re-sends"]


def render_table(results: dict) -> str:
    """The markdown table of a comparison: one row per contender."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for name, row in results["contenders"].items():
        lines.append("| " + " | ".join([name, *cells(row, results["scenarios"])]) + " |")
    return "\n".join(lines) + "\n"
