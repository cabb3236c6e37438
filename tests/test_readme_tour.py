"""The README's 30-second tour and its Python API example, run literally from their code blocks.

Every ```bash block under the README's "## 30-second tour" heading runs, in order,
with bash in a fresh folder that holds the set-up's ``.venv`` (a link to the
environment running this test), as a user runs them from the repository's folder.
Each block must exit 0, and the files the tour points at must be there with the
records it promises. The first ```python block under "## Python API" runs the same
way against the mock teacher; the others call real endpoints, so they are only
read: each run writes to a folder of its own and each generate call has a limit.
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
API_HEADING = "## Python API"

pytestmark = pytest.mark.slow


def tour_blocks(readme: str, heading: str = HEADING, language: str = "bash") -> list[str]:
    """The ```bash (or other ``language``) blocks between ``heading`` and the next second-level heading."""
    start = readme.index(heading + "\n")
    end = readme.find("\n## ", start + len(heading))
    section = readme[start:end if end != -1 else None]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.S | re.M)


def test_the_api_examples_write_to_their_own_folders_and_bound_paid_calls():
    blocks = tour_blocks((REPO / "README.md").read_text(encoding="utf-8"), API_HEADING, "python")
    assert len(blocks) == 2
    code = "\n".join(blocks)
    folders = re.findall(r'"(runs/[^"/]+)', code)
    assert len(folders) == len(set(folders)) and not {"runs/demo", "runs/tour", "runs/generate"} & set(folders)
    calls = re.findall(r"generate\((.*?)\)\s*(?:#|$)", code, flags=re.M)
    assert calls and all("limit=" in call for call in calls)
    assert all(f'"{field}"' in blocks[0] for field in ("category", "difficulty", "source_type"))


def test_the_tours_files_outside_runs_are_ignored_by_git():
    names = ["requests.jsonl", "results.jsonl", "results.errors.jsonl", "results.summary.json", "results.metrics.jsonl"]
    ignored = subprocess.run(["git", "check-ignore", *names], cwd=REPO, capture_output=True, text=True)
    assert sorted(ignored.stdout.split()) == sorted(names)


def test_readme_python_api_block_runs_against_the_mock(tmp_path):
    block = tour_blocks((REPO / "README.md").read_text(encoding="utf-8"), API_HEADING, "python")[0]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{block}\n{result.stdout}\n{result.stderr}"
    assert "plain records kept" in result.stdout
    summary = json.loads((tmp_path / "runs" / "api-mock" / "summary.json").read_text())
    assert summary["model"] == "mock-model" and summary["records"]["planned"] == 10


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
