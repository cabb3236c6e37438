"""A built wheel, installed into a fresh virtual environment without the repository, runs the pipeline.

The environment borrows the test interpreter's third-party packages through a
``.pth`` line (nothing is downloaded), but not its ``odie_async``: the package
comes from the wheel alone, configs and prompts included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(argv, cwd, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ODIE_CONFIG_DIR", "PYTHONHOME")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False, **kw)


def _checked(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "odie_async", src / "odie_async", ignore=shutil.ignore_patterns("__pycache__"))
    _checked(_run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                   "-w", str(tmp / "dist"), "-q"], cwd=tmp))
    wheel = next((tmp / "dist").glob("odie_async-*.whl"))
    venv = tmp / "venv"
    _checked(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp))
    python = venv / "bin" / "python"
    site = Path(_checked(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=tmp)).strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _checked(_run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                   "-q", str(wheel)], cwd=tmp))
    return venv


def test_the_installed_package_is_the_wheels_and_the_repository_is_not_on_the_path(venv, tmp_path):
    code = "import json, sys, odie_async; print(json.dumps([odie_async.__file__, sys.path]))"
    where, path = json.loads(_checked(_run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path)))
    assert Path(where).is_relative_to(venv)
    # The dependencies are borrowed from the test's own environment, which may live inside the repository
    # (CI's .venv); no other entry may lead into the repository.
    borrowed = Path(sysconfig.get_paths()["purelib"]).resolve()
    entries = [(tmp_path / entry).resolve() for entry in path]
    assert not any(REPO in e.parents or e == REPO for e in entries if e != borrowed and borrowed not in e.parents)


def test_odie_generate_runs_the_packaged_mock_preset(venv, tmp_path):
    out = tmp_path / "run"
    proc = _run([str(venv / "bin" / "odie"), "generate", "--config", "mock", "--limit", "4", "--output", str(out),
                 "--no-progress"], cwd=tmp_path)
    _checked(proc)
    summary = json.loads((out / "summary.json").read_text())
    assert Path(summary["config"]).is_relative_to(venv) and summary["config"].endswith("generate-mock.yaml")
    assert summary["records"]["planned"] == 4 and summary["engine"]["failed"] == 0
    fates = sum(len((out / name).read_text().splitlines()) for name in ("train.jsonl", "train_cot.jsonl", "dropped.jsonl"))
    assert fates == 8  # every record, once per variant
    schema = json.loads(_checked(_run([str(venv / "bin" / "odie"), "config-schema", "train"], cwd=tmp_path)))
    assert "lora" in schema["properties"]
