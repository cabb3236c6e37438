"""``filter_file``: stream records through the gate into a kept and a dropped file, resumably.

The two files are the checkpoint, as in the engine: a record is done once its
line is in either; a rerun cuts a torn last line, skips every key already
written and judges the rest. ``KEPT.run.json`` holds what judged them (the
gate's settings, the scorer and its judge, the package version): a rerun judged
otherwise is refused, so two verdicts never share the files. The kept file is
locked for the run (``KEPT.lock``, named after the real file, symlinks resolved),
so a second run on the same output is refused; an output that is the input (a
symlink or hard link included) is refused before anything is read or cut.
Lines are appended one batch at a time with one ``write`` per file on ``O_APPEND`` descriptors, so a stop at any moment loses at
most the batch being judged, and no record is ever written to both files.
SIGINT/SIGTERM finish the current batch and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .. import __version__
from ..engine.checkpoint import ResultStore, write_all
from ..engine.lockfile import held
from ..engine.progress import ProgressLine, format_eta, spend_text
from ..pipeline.fingerprint import keep_one
from ..runtime import StopSignals
from .gate import Gate, Prepared, Verdict
from .records import read_input, validate, written_keys

# Fields a verdict writes: an input record that carries them (a dropped file filtered again) loses
# them, so a line holds only the verdict of this gate.
VERDICT_FIELDS = ("scores", "reasons")

# Another scorer: (prepared records) -> scores per record (None: not scored).
External = Callable[[list[Prepared]], Awaitable[list[dict | None]]]


@dataclass
class FilterStats:
    """Counts of one ``filter_file`` run."""

    total: int = 0
    resumed: int = 0
    kept: int = 0
    dropped: int = 0
    started: float = field(default_factory=time.monotonic)
    interrupted: str | None = None
    exit_code: int | None = None  # the shell's code for the signal that stopped the run (130, 143)
    spend: object | None = None  # the judge's SpendCap (under --max-cost) or its meter

    @property
    def done(self) -> int:
        """Records judged in this run."""
        return self.kept + self.dropped

    def spend_report(self) -> dict | None:
        """The judge's spend, its total projected from the records judged over those to judge (None when unknown)."""
        return self.spend.report(self.done, self.total - self.resumed) if self.spend is not None else None


class FilterProgress(ProgressLine):
    """``[filter] done/total (x%) kept K dropped D | r rec/s | ETA``."""

    def __init__(self, stats: FilterStats, stream=None) -> None:
        super().__init__(stats, "filter", stream)

    def line(self) -> str:
        s = self.stats
        elapsed = max(time.monotonic() - s.started, 1e-9)
        rate = s.done / elapsed
        left = max(0, s.total - s.resumed - s.done)
        finished = s.resumed + s.done
        share = 100.0 * finished / s.total if s.total else 100.0
        line = (f"[filter] {finished:,}/{s.total:,} ({share:.1f}%) kept {s.kept:,} dropped {s.dropped:,} "
                f"| {rate:,.1f} rec/s | ETA {format_eta(left / rate) if rate > 0 else format_eta(None)}")
        spend = s.spend_report()
        return line + f" | {spend_text(spend)}" if spend is not None else line


def kept_line(record: dict, line_no: int, verdict: Verdict) -> dict:
    """The kept file's line: the record, its scores (and ``source_line`` without an id).

    A verdict an input record carried from an earlier run is left out: only this one is written."""
    line = {k: v for k, v in record.items() if k not in VERDICT_FIELDS} | {"scores": verdict.scores}
    if record.get("id") is None:
        line["source_line"] = line_no
    return line


def dropped_line(record: dict, line_no: int, verdict: Verdict) -> dict:
    """The dropped file's line: the record with every reason and the scores."""
    return kept_line(record, line_no, verdict) | {"reasons": verdict.reasons}


class _Files:
    """The kept and dropped files opened for appending."""

    def __init__(self, kept: Path, dropped: Path) -> None:
        self.fds = {}
        for name, path in (("kept", kept), ("dropped", dropped)):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fds[name] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, name: str, lines: list[dict]) -> None:
        if lines:
            write_all(self.fds[name], b"".join(orjson.dumps(line) + b"\n" for line in lines))

    def close(self) -> None:
        for fd in self.fds.values():
            os.fsync(fd)
            os.close(fd)


def done_keys(kept: Path, dropped: Path) -> set[str]:
    """Keys already written to either file."""
    return {key for path in (kept, dropped) for key, _ in written_keys(path)}


def _batches(source: Path, done: set[str], size: int):
    batch = []
    for key, line_no, record in read_input(source):
        if key not in done:
            batch.append((line_no, record))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def check_outputs(source: Path, kept: Path, dropped: Path) -> None:
    """Refuse (``ConfigError``) a kept or dropped file that is the input or the other one, links resolved."""
    ResultStore(kept, dropped).check_paths(source)


def filter_fingerprint(gate: Gate, judge: dict | None) -> dict:
    """What a verdict depends on: the gate's settings, the scorer (and its judge), the package version."""
    settings = gate.cfg.model_dump(mode="json", exclude={"source"})
    return {"gate": settings, "scorer": judge or {"kind": "offline"}, "version": __version__}


def judge_identity(kind: str, config_path: str | None, endpoint: dict | None) -> dict:
    """The scorer ``kind`` and, for ``llm``, its judge's endpoint and model (for ``unieval``, its checkpoint)."""
    if kind == "offline":
        return {"kind": kind}
    from ..pipeline.config import load_config, override_endpoint
    from ..pipeline.fingerprint import teacher

    config = load_config(config_path)
    override_endpoint(config, endpoint)
    if kind == "unieval":
        return {"kind": kind, "unieval_dir": config.scorer.unieval_dir}
    return {"kind": kind} | teacher(config, config.api_key())


def claim(kept: Path):
    """Hold the kept file's lock (``KEPT.lock`` beside the real file, links resolved) while the block runs."""
    real = kept.resolve()
    return held(real.with_name(real.name + ".lock"), str(kept))


async def filter_file(source: str | Path, kept: str | Path, dropped: str | Path, gate: Gate,
                      external: External | None = None, batch_size: int = 32, progress: bool = True,
                      handle_signals: bool = True, judge: dict | None = None) -> FilterStats:
    """Judge every record of ``source`` not yet in ``kept`` or ``dropped`` and append it to one of them.

    ``judge`` names the scorer behind ``external`` (``judge_identity``); the files refuse another."""
    source, kept, dropped = Path(source), Path(kept), Path(dropped)
    check_outputs(source, kept, dropped)
    total = validate(source)
    with claim(kept):
        keep_one(kept.with_name(kept.name + ".run.json"), filter_fingerprint(gate, judge),
                 "name new --kept and --dropped files for this gate")
        stats = FilterStats(total=total, spend=getattr(external, "spend", None))
        return await _filter_locked(source, kept, dropped, gate, external, batch_size, progress, handle_signals,
                                    stats)


async def _filter_locked(source: Path, kept: Path, dropped: Path, gate: Gate, external: External | None,
                         batch_size: int, progress: bool, handle_signals: bool, stats: FilterStats) -> FilterStats:
    done = done_keys(kept, dropped)
    stats.resumed = len(done)
    files = _Files(kept, dropped)
    shown = FilterProgress(stats) if progress else contextlib.nullcontext()

    def stop(signum: int) -> None:
        stats.interrupted = signal.Signals(signum).name

    signals = StopSignals(stop) if handle_signals else contextlib.nullcontext()
    try:
        with signals:
            async with shown:
                for batch in _batches(source, done, batch_size):
                    if stats.interrupted:
                        break
                    await _judge(batch, gate, external, files, stats)
    finally:
        files.close()
    stats.exit_code = signals.exit_code if handle_signals else None
    return stats


async def _judge(batch: list[tuple[int, dict]], gate: Gate, external: External | None, files: _Files,
                 stats: FilterStats) -> None:
    records = [record for _, record in batch]
    prepared = await asyncio.to_thread(gate.prepare, records)
    scores = await external(prepared) if external else None
    verdicts = await asyncio.to_thread(gate.finish, prepared, scores)
    kept = [kept_line(r, n, v) for (n, r), v in zip(batch, verdicts) if v.kept]
    dropped = [dropped_line(r, n, v) for (n, r), v in zip(batch, verdicts) if not v.kept]
    files.append("kept", kept)
    files.append("dropped", dropped)
    stats.kept += len(kept)
    stats.dropped += len(dropped)


def tally(kept: str | Path, dropped: str | Path) -> dict:
    """Counts over both files (this run and earlier ones): kept, dropped, and every reason."""
    reasons: Counter = Counter()
    counts = Counter()
    for name, path in (("kept", Path(kept)), ("dropped", Path(dropped))):
        for _key, line in written_keys(path):
            counts[name] += 1
            if name == "dropped":
                reasons.update(line.get("reasons") or [])
    return {"kept": counts["kept"], "dropped": counts["dropped"], "reasons": dict(reasons.most_common())}
