"""The README's 30-second tour, run literally from its code blocks.

Every ```bash block under the README's "## 30-second tour" heading runs, in order,
with bash in a fresh folder that holds the set-up's ``.venv`` (a link to the
environment running this test), as a user runs them from the repository's folder.
Each block must exit 0, and the files the tour points at must be there with the
records it promises.
"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEADING = "## 30-second tour"

pytestmark = pytest.mark.slow


def tour_blocks(readme: str) -> list[str]:
    """The ```bash blocks between the tour's heading and the next second-level heading."""
    start = readme.index(HEADING + "\n")
    end = readme.find("\n## ", start + len(HEADING))
    section = readme[start:end if end != -1 else None]
    return re.findall(r"^```bash\n(.*?)^```$", section, flags=re.S | re.M)


def test_tour_blocks_are_found():
    blocks = tour_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) == 2
    assert "odie generate" in blocks[0] and "odie batch" in blocks[1] and "odie mock-server" in blocks[1]


def _run_block(block: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", block], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        try:  # a background server the block started must not outlive it, whatever happened
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_readme_tour_runs_as_written(tmp_path):
    blocks = tour_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "configs").symlink_to(REPO / "configs")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    results = [_run_block(block, tmp_path, env) for block in blocks]
    for block, result in zip(blocks, results):
        assert result.returncode == 0, f"{block}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"

    run = tmp_path / "runs" / "tour"
    for name in ("train.jsonl", "train_cot.jsonl", "dropped.jsonl", "requests.jsonl", "summary.json", "README.md"):
        assert (run / name).is_file(), name
    kept = _lines(run / "train.jsonl") + _lines(run / "train_cot.jsonl")
    assert kept and all(r["messages"][-1]["role"] == "assistant" for r in kept)
    assert "kept" in results[0].stdout + results[0].stderr

    answers = _lines(tmp_path / "results.jsonl")
    assert sorted(a["custom_id"] for a in answers) == ["q1", "q2", "q3"]
    assert all(a["response"]["status_code"] == 200 and a["error"] is None for a in answers)
    assert _lines(tmp_path / "results.errors.jsonl") == []
    ledger = json.loads((tmp_path / "results.summary.json").read_text())["ledger"]
    assert ledger["read"] == ledger["output"] == 3 and ledger["unfinished"] == 0
    assert "records: 3 ok, 0 failed" in results[1].stdout
