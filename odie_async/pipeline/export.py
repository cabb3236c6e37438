"""Write the kept records as chat-format JSONL, the dropped ones with their reasons, and the dataset card.

``train.jsonl`` (plain tables) and ``train_cot.jsonl`` (explanation, blank line,
table) share one schema, so both load as one ``datasets`` split::

    datasets.load_dataset("json", data_files=["train.jsonl", "train_cot.jsonl"], split="train")

Each line: ``id`` (the record id and the variant, unique across both files),
``record_id``, ``variant`` (``plain`` or ``cot``), ``messages`` (system, user =
instruction + blank line + text, assistant), ``instruction``,
``original_instruction``, ``domain``, ``category``, ``source_text`` (the
document the table was extracted from; not named ``text``, which tools read as
the training text), ``table``, ``explanation`` (empty for plain) and ``scores``
(faithfulness, consistency, relevance). ``README.md`` is the dataset card.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

from ..exceptions import ConfigError, InputError
from ..files import write_atomic

from .fingerprint import FINGERPRINT, HISTORY
from .flow import Outcome

FILES = {"plain": "train.jsonl", "cot": "train_cot.jsonl"}
DROPPED = "dropped.jsonl"
SUMMARY = "summary.json"
CARD = "README.md"
SCORE_NAMES = ("faithfulness", "consistency", "relevance")
STRONGER_TEACHER = ("to point the run at a stronger teacher: --config openai (configs/generate-openai.yaml, "
                    "key in OPENAI_API_KEY) or --base-url URL of any OpenAI-compatible endpoint")


def _order(variants: list[str]):
    # Records finish in whatever order the endpoint answers; the export must not.
    return lambda o: (o.record.id[1:], o.record.id[0], variants.index(o.variant))


def _scores(outcome: Outcome) -> dict:
    return {name: outcome.scores.get(name) for name in SCORE_NAMES}


def training_line(outcome: Outcome, system_prompt: str) -> dict:
    """One exported record (the same columns in both variants)."""
    record, table = outcome.record, outcome.table.markdown()
    answer = f"{outcome.explanation}\n\n{table}" if outcome.variant == "cot" else table
    return {
        "id": f"{record.id}-{outcome.variant}",
        "record_id": record.id,
        "variant": outcome.variant,
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": f"{record.instruction}\n\n{record.text}"},
            {"role": "assistant", "content": answer},
        ],
        "instruction": record.instruction,
        "original_instruction": record.original_instruction,
        "domain": record.domain,
        "category": record.category,
        "source_text": record.text,
        "table": table,
        "explanation": outcome.explanation if outcome.variant == "cot" else "",
        "scores": _scores(outcome),
    }


def dropped_line(outcome: Outcome) -> dict:
    """One dropped record with every reason and the stage it left at."""
    record = outcome.record
    return {
        "id": f"{record.id}-{outcome.variant}",
        "record_id": record.id,
        "variant": outcome.variant,
        "category": record.category,
        "reason": outcome.reason,
        "reasons": outcome.reasons or [outcome.reason],
        "stage": outcome.stage,
        "domain": record.domain,
        "instruction": record.instruction or record.original_instruction,
        "source_text": record.text,
        "table": outcome.table.markdown() if outcome.table is not None else None,
        "scores": _scores(outcome),
    }


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    write_atomic(path, b"".join(orjson.dumps(line) + b"\n" for line in lines))


def export(out: Path, outcomes: list[Outcome], variants: list[str], system_prompt: str) -> dict[str, str]:
    """Write the training files and ``dropped.jsonl``; return their paths."""
    ordered = sorted(outcomes, key=_order(variants))
    paths = {}
    for variant in variants:
        kept = [o for o in ordered if o.variant == variant and o.kept]
        _write_jsonl(out / FILES[variant], [training_line(o, system_prompt) for o in kept])
        paths[variant] = str(out / FILES[variant])
    _write_jsonl(out / DROPPED, [dropped_line(o) for o in ordered if not o.kept])
    paths["dropped"] = str(out / DROPPED)
    return paths


def filter_report(outcomes: list[Outcome], variants: list[str]) -> dict:
    """Per variant: records attempted, kept, yield, and the histogram of drop reasons."""
    report = {}
    for variant in variants:
        mine = [o for o in outcomes if o.variant == variant]
        kept = sum(o.kept for o in mine)
        by_category = Counter(o.record.category for o in mine if o.kept)
        report[variant] = {
            "records": len(mine),
            "kept": kept,
            "yield": round(kept / len(mine), 4) if mine else None,
            "kept_by_category": dict(sorted(by_category.items())),
            "reasons": dict(Counter(o.reason for o in mine if not o.kept).most_common()),
            "all_reasons": dict(Counter(r for o in mine if not o.kept for r in o.reasons or [o.reason]).most_common()),
        }
    return report


def stage_report(counts: dict[str, Counter], modes: dict[str, str]) -> dict:
    """Per stage: requests sent, answered from the checkpoint, failed, parse share, mode."""
    report = {}
    for stage, mode in modes.items():
        c = counts.get(stage, Counter())
        judged = c["parsed"] + c["unparsable"]
        report[stage] = dict(sorted(c.items())) | {
            "parse_share": round(c["parsed"] / judged, 4) if judged else None,
            "mode": mode,
        }
    return report


def yields(counts: dict[str, Counter], filter_summary: dict, planned: int) -> dict:
    """What each step keeps of what it was given."""
    instructions = counts.get("instructions", Counter())
    out = {
        "instructions_kept_per_call": round(instructions["kept"] / instructions["calls"], 3) if instructions["calls"] else None,
        "instructions_kept_of_parsed": round(instructions["kept"] / instructions["items"], 3) if instructions["items"] else None,
    }
    for stage, c in counts.items():
        if stage != "instructions" and c["answered"]:
            out[f"{stage}_parsed_of_answered"] = round(c["parsed"] / c["answered"], 3)
    for variant, report in filter_summary.items():
        out[f"{variant}_kept_of_records"] = report["yield"]
        out[f"{variant}_kept_of_planned"] = round(report["kept"] / planned, 3) if planned else None
    return out


def plain_words(summary: dict) -> list[str]:
    """What the filter did, said plainly: kept counts, the main reasons, and what to do when little was kept."""
    lines = []
    for variant, report in summary["filter"].items():
        top = ", ".join(f"{reason} {count}" for reason, count in list(report.get("all_reasons", {}).items())[:5])
        lines.append(f"{variant}: the quality gate kept {report['kept']} of {report['records']} records"
                     + (f"; dropped for {top}" if top else ""))
    if any(report["kept"] < max(1, report["records"]) / 2 for report in summary["filter"].values()):
        lines.append(f"few records passed: the teacher ({summary.get('model')}) wrote mostly what the gate rejects "
                     f"(see dropped.jsonl); {STRONGER_TEACHER}")
    return lines


def _inputs_and_history(summary: dict) -> str:
    """The card's lines naming the prompts and seeds used and the folder's history of runs."""
    inputs = summary.get("inputs") or {}
    lines = [f"\nPrompts from `{inputs['prompts']}`, seeds from `{inputs['seeds']}`.\n"] if inputs else []
    history = summary.get("history") or []
    if history:
        lines.append("History of this folder (`history.jsonl`; a change is taken only with `--update`):\n")
        lines += [f"- {entry['time']}: {'; '.join(entry['changes'])} (teacher `{entry['teacher'].get('model')}`)"
                  for entry in history]
    return "\n".join(lines) + ("\n" if lines else "")


def write_card(out: Path, summary: dict, gate) -> Path:
    """The dataset card, ``README.md``: counts, filter settings, reasons, yield per round, tokens, teacher, date."""
    from .verify import verify_words

    rows = "\n".join(f"| {variant} | {FILES[variant]} | {r['records']} | {r['kept']} | "
                     f"{', '.join(f'{k} {v}' for k, v in r.get('all_reasons', {}).items()) or '-'} |"
                     for variant, r in summary["filter"].items())
    thresholds = ", ".join(f"{k} {v}" for k, v in gate.thresholds().items())
    text = f"""# Generated ODIE instruction data

- teacher: `{summary.get('model')}` at `{summary.get('endpoint')}`
- generated: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, config `{summary.get('config')}`
- filter: the quality gate of `{gate.source}` (scorer `{summary.get('scorer')}`); thresholds {thresholds}; checks off: {', '.join(gate.switched_off()) or 'none'}

| variant | file | records judged | kept | reasons records were dropped for (a record may have several) |
|---|---|---|---|---|
{rows}

Both files share one schema (`variant` tells them apart) and load as one split:
`datasets.load_dataset("json", data_files=["train.jsonl", "train_cot.jsonl"], split="train")`.
The document each table was extracted from is in `source_text`; the dropped records, with every
reason, are in `dropped.jsonl`. `odie export {shlex.quote(str(out))} --parquet` (from the folder the run was
started in) writes the same data as Parquet.

{chr(10).join('- ' + line for line in verify_words(summary) + plain_words(summary))}
{_inputs_and_history(summary)}"""
    path = out / CARD
    write_atomic(path, text.encode("utf-8"))
    return path


def load_split(run: Path, cache_dir: str):
    """Both training files of a run folder as one ``datasets`` split (``variant`` tells them apart)."""
    import datasets

    files = [str(run / name) for name in FILES.values() if (run / name).is_file() and (run / name).stat().st_size]
    if not files:
        raise InputError(run, 0, f"no records to export: {' and '.join(FILES.values())} are missing or empty")
    datasets.disable_progress_bars()
    return datasets.load_dataset("json", data_files=files, split="train", cache_dir=cache_dir)


# The files of a run folder that are its data: no export may write over one of them.
RUN_FILES = (*FILES.values(), DROPPED, SUMMARY, CARD, "requests.jsonl", "errors.jsonl", "metrics.jsonl",
             FINGERPRINT, HISTORY)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def check_targets(run: Path, parquet: Path | None, disk: Path | None) -> None:
    """Refuse (``ConfigError``) a target that is one of the run's data files or holds them (links
    resolved, hard links too): an export never writes over its own input."""
    data = [(run / name).resolve() for name in RUN_FILES]
    inodes = {_inode(path) for path in data} - {None}
    if parquet is not None:
        real = parquet.resolve()
        if real in data or _inode(real) in inodes or real.is_dir():
            raise ConfigError(f"--parquet {parquet} would write over the run's own files; name another file")
    if disk is not None:
        real = disk.resolve()
        if _is_within(run.resolve(), real) or _inode(real) in inodes or any(_is_within(f, real) for f in data):
            raise ConfigError(f"--save-to-disk {disk} would write over the run's own files; name another folder")
        if parquet is not None and _is_within(parquet.resolve(), real):
            raise ConfigError(f"--parquet {parquet} is inside --save-to-disk {disk}; name another file")


def export_dataset(run: Path, parquet: Path | None = None, disk: Path | None = None) -> dict[str, str]:
    """Write a run's records as Parquet and/or a ``save_to_disk`` folder; return what was written."""
    check_targets(run, parquet, disk)
    with tempfile.TemporaryDirectory(prefix="odie-export-") as cache:  # datasets' arrow cache, not left behind
        split = load_split(run, cache)
        written = {"records": str(len(split))}
        if parquet is not None:
            parquet.parent.mkdir(parents=True, exist_ok=True)
            split.to_parquet(str(parquet))
            written["parquet"] = str(parquet)
        if disk is not None:
            split.save_to_disk(str(disk))
            written["save_to_disk"] = str(disk)
    return written
