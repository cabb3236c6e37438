"""A first run that starts fast: the embedded server's starts, and the README's main job.

    python benchmarks/bench_start.py [--fresh-cache] [--skip-main-job] [--keep-run DIR] [--json OUT.json]

1. ``odie serve`` (no options) started and stopped twice: seconds until it prints its URL. With
   ``--fresh-cache`` the first start compiles from an empty cache folder (``ODIE_CACHE_DIR`` in a
   temporary folder, the converted model copied in); the second finds the compiled graphs kept
   there. ``odie serve --enforce-eager`` is timed once for the eager/compiled choice.
2. The README's main job, ``odie generate --limit 10 --output DIR`` with no other option: seconds
   from start to exit (the embedded server started for the run included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import emit  # noqa: E402

PY = sys.executable


def serve_start(env: dict, *extra: str) -> float:
    """Seconds from ``odie serve`` to its printed URL; the server is stopped after."""
    started = time.monotonic()
    proc = subprocess.Popen([PY, "-m", "odie_async", "serve", "--port", "0", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
    url = proc.stdout.readline().strip()
    seconds = time.monotonic() - started
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    if not url:
        raise SystemExit(f"odie serve {' '.join(extra)} did not start (exit {proc.returncode})")
    return seconds


def main_job(env: dict, out: Path) -> dict:
    """The README's main job into ``out``: its time, exit code, and what the gate kept per round."""
    started = time.monotonic()
    proc = subprocess.run([PY, "-m", "odie_async", "generate", "--limit", "10", "--output", str(out)],
                          env=env, capture_output=True, text=True)
    report = {"exit_code": proc.returncode, "seconds": time.monotonic() - started,
              "last_lines": proc.stdout.strip().splitlines()[-4:]}
    summary = out / "summary.json"
    if summary.exists():
        data = json.loads(summary.read_text(encoding="utf-8"))
        report["filter"] = data.get("filter")
        report["verify"] = data.get("verify")
    return report


def fresh_cache(tmp: Path) -> dict:
    """An empty cache folder holding only the converted embedded model (converting is set-up, not start)."""
    from odie_async.endpoints.embedded import embedded_model_dir

    model = embedded_model_dir()
    cache = tmp / "cache"
    shutil.copytree(model, cache / model.relative_to(model.parents[1]))
    return os.environ | {"ODIE_CACHE_DIR": str(cache)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh-cache", action="store_true")
    parser.add_argument("--skip-main-job", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep-run", type=Path, help="keep the main job's run folder here (default: deleted)")
    args = parser.parse_args()
    report: dict = {"load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="odie-bench-start-") as tmp:
        tmp = Path(tmp)
        env = fresh_cache(tmp) if args.fresh_cache else dict(os.environ)
        report["first_start_s"] = serve_start(env)
        report["second_start_s"] = serve_start(env)
        report["eager_start_s"] = serve_start(env, "--enforce-eager")
        if not args.skip_main_job:
            report["main_job"] = main_job(env, args.keep_run or tmp / "demo")
    report["load_average_after"] = os.getloadavg()
    emit(report, args.json)


if __name__ == "__main__":
    main()
