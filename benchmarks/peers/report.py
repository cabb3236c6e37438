"""Writing a comparison out: results.json, table.md, README-section.md and the PNG plots."""

from __future__ import annotations

from pathlib import Path

import orjson

from harness import render_table

COMMAND = "python benchmarks/bench_peers.py"


def write_report(results: dict, out: Path) -> None:
    """Everything a reader looks at, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    table = render_table(results)
    (out / "table.md").write_text(table)
    plots = plot_throughput(results, out / "throughput.png") + plot_ratelimit(results, out / "ratelimit.png")
    (out / "README-section.md").write_text(readme_section(results, table, plots))


def plot_throughput(results: dict, path: Path) -> list[str]:
    """Bars of requests/s per contender in the zero-latency and 500 ms scenarios."""
    panels = [(key, title) for key, title in (("overhead", "zero latency, concurrency 256"),
                                              ("latency", "500 ms latency, concurrency 500"))
              if key in results["scenarios"]]
    if not panels:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["contenders"])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 0.6 * len(names) + 1.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        values = [results["contenders"][n].get(key, {}).get("requests_per_s", 0) or 0 for n in names]
        bars = ax.barh(names, values, color=["#1f77b4" if n == "odie batch" else "#9e9e9e" for n in names])
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("answered requests/s (log scale)")
        ax.set_title(title)
        for bar, value in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}", va="center", fontsize=8)
        ax.set_xlim(right=max(values + [1]) * 4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path.name]


def plot_ratelimit(results: dict, path: Path) -> list[str]:
    """Answers per second over time under the enforced limit, with the limit drawn in."""
    spec = results["scenarios"].get("ratelimit")
    if spec is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for name, row in results["contenders"].items():
        series = (row.get("ratelimit") or {}).get("answers_per_s") or []
        ax.plot(range(len(series)), series, label=name, linewidth=2.2 if name == "odie batch" else 1.2)
    ax.axhline(spec["rpm"] / 60, color="black", linestyle="--", linewidth=1, label=f"limit ({spec['rpm']:,} RPM)")
    ax.set_xlabel("seconds from the contender's first request")
    ax.set_ylabel("answered requests/s")
    ax.set_title(f"Under an enforced {spec['rpm']:,} RPM / {spec['tpm']:,} TPM limit ({spec['n']:,} records)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path.name]


METRICS = [  # scenario, what is compared, how to read it off, whether higher is better, how to print it
    ("overhead", "requests/s at zero latency", lambda r, n: r["requests_per_s"], True, "{:,.0f}"),
    ("overhead", "client CPU µs per request", lambda r, n: r["cpu_us_per_request"], False, "{:,.0f}"),
    ("latency", "requests/s at 500 ms latency", lambda r, n: r["requests_per_s"], True, "{:,.0f}"),
    ("ratelimit", "share of the rate limit turned into records in the output",
     lambda r, n: r["limit_share"] * (n - r["lost"]) / n, True, "{:.1%}"),
    ("ratelimit", "share of requests answered 429", lambda r, n: r["answered_429"] / max(1, r["requests"]), False, "{:.1%}"),
    ("faults", "records lost or duplicated under 20 % faults", lambda r, n: r["lost"] + r["duplicate_rows"], False, "{:,}"),
    ("interrupt", "records re-sent, lost or duplicated after Ctrl-C and a rerun",
     lambda r, n: r["rerun_records_resent"] + r["lost"] + r["duplicate_rows"], False, "{:,}"),
]


def findings(results: dict) -> list[str]:
    """One sentence per compared figure: odie against the best peer, saying plainly where odie is behind."""
    rows = results["contenders"]
    odie = rows.get("odie batch", {})
    lines = []
    for key, what, read, higher, fmt in METRICS:
        if key not in odie:
            continue
        n = results["scenarios"][key]["n"]
        peers = [(name, read(r[key], n)) for name, r in rows.items()
                 if name != "odie batch" and key in r and read(r[key], n) is not None]
        if not peers:
            continue
        mine = read(odie[key], n)
        best_name, best = (max if higher else min)(peers, key=lambda item: item[1])
        behind = mine < best if higher else mine > best
        ratio = f", {mine / best:.1f}× the best peer's" if higher and best else ""
        verdict = "**behind**" if behind else ("tied with" if mine == best else "ahead of")
        chance = ""
        if key == "faults":
            spec = results["scenarios"][key]
            chance = (f" (at a 20 % fault rate and 5 attempts, about {spec['n'] * 0.2 ** 5:.1f} of {spec['n']:,} "
                      "records are expected to meet five faults in a row, whatever the tool)")
        lines.append(f"{what}: `odie batch` {fmt.format(mine)}{ratio}; best peer {best_name} "
                     f"{fmt.format(best)}: odie is {verdict} it{chance}.")
    return lines


NOTES = Path(__file__).with_name("notes.md")


def readme_section(results: dict, table: str, plots: list[str]) -> str:
    """The README section: command, machine, table, how to read it, plots, findings, notes, set-up."""
    m = results["machine"]
    s = results["scenarios"]
    setups = "\n".join(f"- **{name}** ({', '.join(f'{k} {v}' for k, v in row['versions'].items())}): {row['setup']}"
                       for name, row in results["contenders"].items())
    pinned = "client pinned to core 0 and mock to core 1 with `taskset`" if m["pinned"] else "no CPU pinning"
    images = "\n".join(f"![{p}](benchmarks/results/peers/{p})" for p in plots)
    sizes = ", ".join(f"{k} {v['n']:,}" for k, v in s.items())
    quick = "\n\n**Smoke run (`--quick`), not the published figures.**" if results.get("quick") else ""
    notes = NOTES.read_text().strip() if NOTES.exists() else ""
    bullets = "\n".join("- " + line for line in findings(results))
    return f"""## `odie batch` against the alternatives

```bash
{COMMAND}   # about {results['total_s'] / 60:.0f} minutes; peers install into throwaway venvs on the first run
```

Measured on {m['cores']} cores of a shared {m['cpu']} (Python {m['python']}), {pinned}; load average
{m['load_avg_at_start'][0]:.1f} at the start. The machine is shared with other work, so absolute figures
are noisy. Each scenario runs every contender back to back against a fresh `odie mock-server`, with the
same input (unique short prompts, `max_tokens` 16; records per scenario: {sizes}), the same
concurrency, limits, 5 attempts per record and a 30 s request timeout.{quick}

{table}
How to read it. Throughput is answered requests per second from a tool's first request to its last
answer, read off the mock's request log, so start-up and the final write are left out ("e2e": records
over the whole process's wall time). CPU is the client process's user + system time in its working
phase per answered request. Rate limit: the mock enforces 3,000 RPM / 120,000 TPM and every tool is
told the same; "share achieved" is answers over what the mock's bucket allows in the tool's window.
Faults: records missing from the final output ("lost"), extra output rows ("duplicated"), records the
mock answered 200 more than once ("paid twice"). Ctrl-C: SIGINT to the tool's process group once half
the records were answered, then the same command again; the cell counts records answered in the first
run that the rerun requested again. "Capped" runs hit the scenario's time limit (SIGINT, then SIGKILL).

{images}

What the figures say:
{bullets}

{notes}

How each tool was set up (its documented settings, at the same numbers):
{setups}
"""
