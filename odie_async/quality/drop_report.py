"""``odie filter --report DIR``: a picture of why records were dropped, and ``summary.json``.

``report.png`` holds the reasons by count and a histogram per score with its
threshold drawn; ``summary.json`` the counts, reasons, thresholds and checks off,
and, when records carry keep/drop labels, precision and recall of the drops
(a drop is a positive) and the drop rate per ``label`` (the calibration set's kinds).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path


from ..engine.progress import write_summary
from .calibration import labelled_figures
from .gate_config import GateConfig
from .gate import is_fixed
from .records import written_keys

SCORE_PANELS = (("faithfulness", None, "faithfulness"), ("consistency", True, "consistency_fixed"),
                ("consistency", False, "consistency_open"), ("relevance", None, "relevance"))


def _lines(kept: Path, dropped: Path) -> list[tuple[bool, dict]]:
    return [(name == "kept", line) for name, path in (("kept", kept), ("dropped", dropped))
            for _key, line in written_keys(path)]


def label_figures(lines: list[tuple[bool, dict]], field: str) -> dict | None:
    """Precision and recall of drops against ``field`` (``keep``/``drop``), and drop rates per ``label``."""
    labelled = [(kept, str(line[field]).lower()) for kept, line in lines if line.get(field) in ("keep", "drop")]
    if not labelled:
        return None
    tp = sum(not kept and want == "drop" for kept, want in labelled)
    fp = sum(not kept and want == "keep" for kept, want in labelled)
    fn = sum(kept and want == "drop" for kept, want in labelled)
    by_label: dict[str, list[bool]] = defaultdict(list)
    for kept, line in lines:
        if "label" in line:
            by_label[str(line["label"])].append(not kept)
    return {
        "labelled": len(labelled),
        "drop_precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "drop_recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "keep_share_of_keep_labels": round(1 - fp / max(1, sum(w == "keep" for _, w in labelled)), 4),
        "dropped_share_by_label": {k: {"records": len(v), "dropped": sum(v), "share": round(sum(v) / len(v), 4)}
                                   for k, v in sorted(by_label.items())},
    }


def summarise(lines: list[tuple[bool, dict]], cfg: GateConfig, field: str) -> dict:
    """The report's figures."""
    reasons = Counter(r for kept, line in lines if not kept for r in line.get("reasons") or [])
    return {
        "records": len(lines),
        "kept": sum(kept for kept, _ in lines),
        "dropped": sum(not kept for kept, _ in lines),
        "reasons": dict(reasons.most_common()),
        "thresholds": cfg.thresholds(),
        "checks_off": cfg.switched_off(),
        "config": cfg.source,
        "labels": label_figures(lines, field),
        "checks": labelled_figures(lines, field),  # precision and recall per check and per split (fit / held_out)
    }


def plot(lines: list[tuple[bool, dict]], summary: dict, path: Path) -> None:
    """Reasons by count, and each score's histogram (kept and dropped stacked) with its threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(SCORE_PANELS), figsize=(5 * (1 + len(SCORE_PANELS)), 4.5))
    reasons = list(summary["reasons"].items())[::-1]
    axes[0].barh([r for r, _ in reasons], [c for _, c in reasons], color="tab:red")
    axes[0].set_title(f"reasons ({summary['dropped']} of {summary['records']} dropped)")
    axes[0].set_xlabel("records")
    for ax, (name, fixed, threshold) in zip(axes[1:], SCORE_PANELS):
        groups = {True: [], False: []}
        for kept, line in lines:
            value = (line.get("scores") or {}).get(name)
            if value is not None and (fixed is None or is_fixed(line.get("category")) == fixed):
                groups[kept].append(value)
        ax.hist([groups[True], groups[False]], bins=20, range=(0, 1), stacked=True,
                color=["tab:green", "tab:red"], label=["kept", "dropped"])
        ax.axvline(summary["thresholds"][threshold], color="black", linestyle="--", label="threshold")
        ax.set_title(threshold.replace("_", " (") + (")" if "_" in threshold else ""))
        ax.set_xlabel("score")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(folder: Path, kept: str | Path, dropped: str | Path, cfg: GateConfig,
                 label_field: str = "expected") -> list[Path]:
    """Write ``report.png`` and ``summary.json`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = _lines(Path(kept), Path(dropped))
    summary = summarise(lines, cfg, label_field)
    write_summary(summary, folder / "summary.json")
    plot(lines, summary, folder / "report.png")
    return [folder / "report.png", folder / "summary.json"]
