"""A self-hosted server kept saturated: ``vllm run-batch`` against ``odie serve`` + ``odie batch``.

    python benchmarks/bench_saturate.py [--requests 256] [--max-tokens 128] [--json OUT.json]

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


def run_batch(tmp: Path, model_dir: Path, n: int, max_tokens: int, interrupt_at: int | None = None) -> dict:
    """vLLM's own run-batch; the generation phase starts at its first progress line."""
    inp = write_requests(tmp / "rb-in.jsonl", str(model_dir), n, max_tokens)
    out = tmp / f"rb-out-{time.monotonic_ns()}.jsonl"
    kv_gib = VLLMServer(SETTINGS).kv_cache_bytes() / 2**30  # the same cache as odie serve gets
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(kv_gib))), "HF_HUB_OFFLINE": "1",
                        "VLLM_NO_USAGE_STATS": "1"}
    cmd = [PY, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(inp), "-o", str(out), "--model", str(model_dir),
           "--dtype", "float32", "--max-num-seqs", str(SEQS), "--max-model-len", "1024"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    first_progress: list[float] = []

    def watch() -> None:
        for line in proc.stderr:
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
            "generation_s": end - gen_start, "tokens_per_s": lines_in(out) * max_tokens / max(1e-9, end - gen_start)}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-interrupt", action="store_true")
    args = parser.parse_args()
    n, tokens = args.requests, args.max_tokens
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
