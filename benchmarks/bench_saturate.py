"""A self-hosted server kept saturated: ``vllm run-batch`` against ``odie serve`` + ``odie batch``.

    python benchmarks/bench_saturate.py [--requests 256] [--max-tokens 128] [--json OUT.json]
    python benchmarks/bench_saturate.py --defaults [--run-batch-kv-gib GIB] [--json OUT.json]

``--defaults`` is what a user gets with no options on either side: ``odie serve`` (its own sizing)
then ``odie batch`` with no options, against ``vllm run-batch`` with no options but the model and
float32. Only generation is timed (run-batch from its first progress line, odie from the start of
``odie batch`` against the started server). vLLM's CPU backend reserves 92 % of the machine's memory
for run-batch unless told otherwise and refuses to start beside other programs; ``--run-batch-kv-gib``
gives it a cache size (``VLLM_CPU_KVCACHE_SPACE``) in that case, and the report says so.

The same file of chat requests (``ignore_eos``, so every answer is ``--max-tokens`` long) on the
embedded model (SmolLM2-135M, float32), both engines running up to 128 sequences at once:

1. output tokens/s over the generation phase (start-up excluded for both): run-batch from its
   first progress line to its exit; odie from the start of ``odie batch`` (default settings, no
   ``--concurrency``) against an already started ``odie serve`` to its exit. Timeouts and re-sent
   requests of odie are read from its summary.
2. odie interrupted with SIGINT at half-way and rerun: requests re-sent and total time to all
   answers. run-batch has no resume and writes its output only at the end, so its figures are
   derived from the measured run: every request re-sent, start-up plus half the generation plus a
   whole run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import emit  # noqa: E402

from odie_async.endpoints.embedded import embedded_model_dir  # noqa: E402
from odie_async.endpoints.serve import ServeSettings, VLLMServer  # noqa: E402

PY = sys.executable
SEQS = 128
SETTINGS = ServeSettings(max_num_seqs=SEQS, max_model_len=1024)


def write_requests(path: Path, model: str, n: int, max_tokens: int) -> Path:
    lines = [orjson.dumps({"custom_id": f"s{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": model, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.8,
        "messages": [{"role": "user", "content": f"Tell a long story about the number {i}."}]}}) for i in range(n)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def lines_in(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def run_batch(tmp: Path, model_dir: Path, n: int, max_tokens: int, interrupt_at: int | None = None,
              defaults: bool = False, kv_gib: float | None = None) -> dict:
    """vLLM's own run-batch; the generation phase starts at its first progress line."""
    inp = write_requests(tmp / "rb-in.jsonl", str(model_dir), n, max_tokens)
    out = tmp / f"rb-out-{time.monotonic_ns()}.jsonl"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    cmd = [PY, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(inp), "-o", str(out), "--model", str(model_dir),
           "--dtype", "float32"]
    if not defaults:
        kv_gib = VLLMServer(SETTINGS).kv_cache_bytes() / 2**30  # the same cache as odie serve gets
        cmd += ["--max-num-seqs", str(SEQS), "--max-model-len", "1024"]
    if kv_gib:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(kv_gib)))
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    first_progress: list[float] = []
    tail: list[str] = []

    def watch() -> None:
        for line in proc.stderr:
            tail[:] = (tail + [line.rstrip()])[-5:]
            if not first_progress and ("Running batch" in line or "it/s]" in line or "Processed prompts" in line):
                first_progress.append(time.monotonic())

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    if interrupt_at is not None:
        while proc.poll() is None and not first_progress:
            time.sleep(0.5)
        time.sleep(interrupt_at)  # run-batch writes its output only at the end: interrupt by time
        os.killpg(proc.pid, signal.SIGINT)
    proc.wait()
    reader.join(timeout=5)
    end = time.monotonic()
    gen_start = first_progress[0] if first_progress else start
    return {"exit_code": proc.returncode, "answers": lines_in(out), "wall_s": end - start,
            "generation_s": end - gen_start, "tokens_per_s": lines_in(out) * max_tokens / max(1e-9, end - gen_start),
            "argv": cmd[1:], "kv_cache_space_gib": env.get("VLLM_CPU_KVCACHE_SPACE"),
            "stderr_tail": tail if proc.returncode else []}


def odie_batch(tmp: Path, base_url: str, model: str, n: int, max_tokens: int, interrupt_at: int | None = None,
               out: Path | None = None) -> dict:
    inp = write_requests(tmp / "odie-in.jsonl", model, n, max_tokens)
    out = out or tmp / f"odie-out-{time.monotonic_ns()}.jsonl"
    cmd = [PY, "-m", "odie_async", "batch", str(inp), "-o", str(out), "--base-url", base_url, "--no-progress"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if interrupt_at is not None:
        while proc.poll() is None and lines_in(out) < interrupt_at:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    wall = time.monotonic() - start
    summary = orjson.loads(out.with_suffix(".summary.json").read_bytes())
    return {"exit_code": proc.returncode, "answers": lines_in(out), "generation_s": wall,
            "tokens_per_s": summary["succeeded"] * max_tokens / wall, "attempts": summary["attempts"],
            "retries": summary["retries"], "errors": summary["error_codes"], "concurrency_final":
            summary.get("concurrency_final"), "out": str(out), "stderr_tail": err.strip().splitlines()[-2:]}


class OdieServe:
    """``odie serve`` with no options, as a user starts it; the base URL is its first line of output."""

    def __enter__(self) -> "OdieServe":
        self.started = time.monotonic()
        self.proc = subprocess.Popen([PY, "-m", "odie_async", "serve", "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.base_url = self.proc.stdout.readline().strip()
        self.start_s = time.monotonic() - self.started
        if not self.base_url:
            raise SystemExit(f"odie serve did not start:\n{self.proc.stderr.read()[-3000:]}")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep its pipe drained
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def with_defaults(n: int, tokens: int, kv_gib: float | None) -> dict:
    """Both sides as a user runs them with no options (see the module's docstring)."""
    from odie_async.endpoints.embedded import EMBEDDED_NAME

    report: dict = {"requests": n, "max_tokens": tokens, "mode": "defaults"}
    with tempfile.TemporaryDirectory(prefix="odie-bench-saturate-") as tmp:
        tmp = Path(tmp)
        report["run_batch"] = run_batch(tmp, embedded_model_dir(), n, tokens, defaults=True, kv_gib=kv_gib)
        with OdieServe() as served:
            report["odie_serve_start_s"] = served.start_s
            report["odie"] = odie_batch(tmp, served.base_url, EMBEDDED_NAME, n, tokens)
    rb = report["run_batch"]["tokens_per_s"]
    report["odie_vs_run_batch"] = report["odie"]["tokens_per_s"] / rb if rb else None  # None: run-batch failed
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-interrupt", action="store_true")
    parser.add_argument("--defaults", action="store_true", help="both sides with no options (see above)")
    parser.add_argument("--run-batch-kv-gib", type=float, default=None,
                        help="with --defaults: a KV cache for run-batch where its default reservation cannot start")
    args = parser.parse_args()
    n, tokens = args.requests, args.max_tokens
    if args.defaults:
        emit(with_defaults(n, tokens, args.run_batch_kv_gib), args.json)
        return
    model_dir = embedded_model_dir()
    report: dict = {"requests": n, "max_tokens": tokens, "max_num_seqs": SEQS}
    with tempfile.TemporaryDirectory(prefix="odie-bench-saturate-") as tmp:
        tmp = Path(tmp)
        report["run_batch"] = run_batch(tmp, model_dir, n, tokens)
        with VLLMServer(SETTINGS) as server:
            report["odie"] = odie_batch(tmp, server.base_url, server.model_name, n, tokens)
            if not args.skip_interrupt:
                out = tmp / "odie-interrupted.jsonl"
                first = odie_batch(tmp, server.base_url, server.model_name, n, tokens, interrupt_at=n // 2, out=out)
                rerun = odie_batch(tmp, server.base_url, server.model_name, n, tokens, out=out)
                report["odie_interrupted"] = {
                    "first": first, "rerun": rerun, "answers": rerun["answers"],
                    "resent": first["attempts"] + rerun["attempts"] - n - first["retries"] - rerun["retries"],
                    "total_s": first["generation_s"] + rerun["generation_s"]}
        # run-batch keeps nothing of an interrupted run (it writes its output at the end and has
        # no resume), so its rerun is the whole run again: derived from the measured run, not rerun.
        rb = report["run_batch"]
        report["run_batch_interrupted"] = {
            "resent": n, "answers_kept": 0, "derived_from_the_measured_run": True,
            "total_s": rb["wall_s"] - rb["generation_s"] / 2 + rb["wall_s"]}
    report["odie_vs_run_batch"] = report["odie"]["tokens_per_s"] / report["run_batch"]["tokens_per_s"]
    emit(report, args.json)


if __name__ == "__main__":
    main()
