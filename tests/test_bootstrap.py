"""The set-up's choice of where the CPU build of torch comes from, in both situations.

Each case runs the real shell function against a pip whose configuration the test
controls: a wheel folder that holds ``torch==2.13.0+cpu`` (like this machine's), or
none (like a fresh machine elsewhere, where only the PyTorch CPU index serves it).
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _fake_torch_wheel(folder: Path) -> None:
    dist = "torch-2.13.0+cpu.dist-info"
    with zipfile.ZipFile(folder / "torch-2.13.0+cpu-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n")
        whl.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")


def _choose(tmp_path: Path, wheels: Path) -> subprocess.CompletedProcess:
    empty_index = tmp_path / "index"
    empty_index.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(wheels),
            "PIP_INDEX_URL": empty_index.as_uri(), "PIP_NO_INPUT": "1"}
    script = f'source scripts/torch_index.sh && torch_cpu_pip_options "{sys.executable}"'
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_uses_the_configured_source_when_it_has_the_cpu_build(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_torch_wheel(wheels)
    done = _choose(tmp_path, wheels)
    assert done.returncode == 0
    assert done.stdout.strip() == ""
    assert "found where pip is configured to look" in done.stderr


def test_adds_the_pytorch_cpu_index_elsewhere(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    done = _choose(tmp_path, wheels)
    assert done.returncode == 0
    assert done.stdout.split() == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    assert "adding the PyTorch CPU index" in done.stderr
