"""The package's import rules, checked by walking every module's imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import odie_async

PACKAGE = Path(odie_async.__file__).parent
ENGINE_MAY_NOT_IMPORT = ("odie_async.pipeline", "odie_async.model", "odie_async.evaluation", "odie_async.cli")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, at any depth of the file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(root: Path) -> list[str]:
    """``module imports module`` for each import the layout forbids."""
    found = []
    top = root.name
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        for target in sorted(imports_of(path, root)):
            if not target.startswith(top + "."):
                continue
            rule = target.replace(top, "odie_async", 1)
            where = name.replace(top, "odie_async", 1)
            if where.startswith("odie_async.engine") and rule.startswith(ENGINE_MAY_NOT_IMPORT):
                found.append(f"{where} imports {rule}")
            in_cli = where.startswith("odie_async.cli.")
            if in_cli and rule.startswith("odie_async.cli.") and rule != where:
                found.append(f"{where} imports {rule}")
            if not where.startswith(("odie_async.cli", "odie_async.__main__")) and rule.startswith("odie_async.cli"):
                found.append(f"{where} imports {rule}")
    return found


def test_the_package_keeps_its_import_rules():
    assert violations(PACKAGE) == []


@pytest.mark.parametrize("module, source, expected", [
    ("engine/core.py", "from ..pipeline.flow import Flow\n", "odie_async.engine.core imports odie_async.pipeline.flow"),
    ("engine/limits.py", "def f():\n    import odie_async.model.train\n", "odie_async.engine.limits imports odie_async.model.train"),
    ("cli/train.py", "from . import predict\n", "odie_async.cli.train imports odie_async.cli.predict"),
    ("cli/train.py", "from .generate import run\n", "odie_async.cli.train imports odie_async.cli.generate"),
    ("pipeline/run.py", "from ..cli import main\n", "odie_async.pipeline.run imports odie_async.cli"),
])
def test_the_walk_catches_a_forbidden_import(tmp_path, module, source, expected):
    root = tmp_path / "odie_async"
    for folder in ("engine", "cli", "pipeline"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / module).write_text(source)
    assert expected in violations(root)



# -- one home per concept: calls that only their owner may make -------------------------------------------

def _calls(root: Path, needle: str, allowed: tuple[str, ...]) -> list[str]:
    """``module:line`` for each line holding ``needle`` (code, not comments) outside the ``allowed`` files."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(allowed):
            continue
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if needle in line.split("#", 1)[0]:
                found.append(f"{relative}:{line_no}")
    return found


def signal_handlers(root: Path) -> list[str]:
    """Signal handlers installed anywhere but ``runtime.StopSignals``."""
    return _calls(root, "signal.signal(", ("runtime.py",)) + _calls(root, ".add_signal_handler(", ("runtime.py",))


def exits_and_argparse(root: Path) -> list[str]:
    """``sys.exit(``, argparse or an option declared (``add_argument``) outside the command line
    (``cli/``, and ``options.py``: the option types and declarations every command shares)."""
    edge = ("cli/", "__main__.py", "options.py")
    return (_calls(root, "sys.exit(", edge) + _calls(root, "import argparse", edge) + _calls(root, "argparse.", edge)
            + _calls(root, ".add_argument(", edge) + _calls(root, ".add_argument_group(", edge))


def printing(root: Path) -> list[str]:
    """``print(`` outside the command line: the library returns what a command shows."""
    return [hit for hit in _calls(root, "print(", ("cli/", "__main__.py"))
            if re.search(r"(?<![\w.])print\(", _line(root, hit).split("#", 1)[0])]


def renames(root: Path) -> list[str]:
    """``os.replace(`` outside the one atomic write (``files.py``), and whole files written another way
    (``Path.write_bytes``/``write_text``: a reader could see half a file)."""
    return (_calls(root, "os.replace(", ("files.py",)) + _calls(root, ".write_bytes(", ("files.py",))
            + _calls(root, ".write_text(", ("files.py",)))


def yaml_reads(root: Path) -> list[str]:
    """YAML parsed outside the one reader (``files.py``, which reads 3e-4 as a float)."""
    return _calls(root, "yaml.safe_load(", ("files.py",)) + _calls(root, "yaml.load(", ("files.py",))


# The HTTP clients: the engine's, the streaming one (the bench's too), the provider batch backends.
HTTP_CLIENTS = ("engine/client.py", "engine/streaming.py", "providers/", "bench/")


def http_errors(root: Path) -> list[str]:
    """aiohttp's or orjson's errors caught in an HTTP client outside the one boundary (``engine/client.py``:
    ``transport_errors``, ``json_object``, ``json_or_none``, ``status_error``)."""
    found = []
    for needle in ("aiohttp.Client", "aiohttp.ServerDisconnectedError", "asyncio.TimeoutError", "JSONDecodeError"):
        found += [hit for hit in _calls(root, needle, ("engine/client.py",))
                  if hit.startswith(HTTP_CLIENTS) and not hit.startswith("providers/journal.py")]
    return [hit for hit in found if "aiohttp.ClientTimeout" not in _line(root, hit)
            and "aiohttp.ClientSession" not in _line(root, hit)]


def _line(root: Path, hit: str) -> str:
    relative, line_no = hit.rsplit(":", 1)
    return (root / relative).read_text(encoding="utf-8").splitlines()[int(line_no) - 1]


def private_imports(root: Path) -> list[str]:
    """``module imports package.module._name`` where the importer sits in another subpackage."""
    found = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if _subpackage(base) == _subpackage(name):
                continue
            found += [f"{name} imports {base}.{alias.name}" for alias in node.names
                      if alias.name.startswith("_") and not alias.name.startswith("__")]
    return found


def _subpackage(module: str) -> str:
    """``odie_async.engine`` for ``odie_async.engine.core``; a top-level module is its own."""
    return ".".join(module.split(".")[:2])


OWNERS = {
    "signal handlers": signal_handlers,
    "sys.exit and argparse": exits_and_argparse,
    "printing": printing,
    "os.replace": renames,
    "yaml reads": yaml_reads,
    "private imports": private_imports,
    "HTTP and JSON errors": http_errors,
}


@pytest.mark.parametrize("concept, check", list(OWNERS.items()), ids=list(OWNERS))
def test_each_concept_has_one_owner(concept, check):
    assert check(PACKAGE) == []


@pytest.mark.parametrize("check, module, source", [
    (signal_handlers, "engine/core.py", "import signal\nsignal.signal(2, print)\n"),
    (signal_handlers, "quality/filtering.py", "loop.add_signal_handler(2, print)\n"),
    (exits_and_argparse, "engine/core.py", "import sys\nsys.exit(3)\n"),
    (exits_and_argparse, "pipeline/run.py", "import argparse\n"),
    (exits_and_argparse, "endpoints/mock_batches.py", "def add_arguments(parser):\n    parser.add_argument('--x')\n"),
    (printing, "providers/report.py", "def fingerprint(x):\n    print(x)\n"),
    (renames, "viewer/index.py", "import os\nos.replace('a', 'b')\n"),
    (renames, "quality/drop_report.py", "def save(path, data):\n    path.write_bytes(data)\n"),
    (yaml_reads, "quality/gate_config.py", "import yaml\nyaml.safe_load('a: 1')\n"),
    (private_imports, "cli/train.py", "from ..engine.core import _private\n"),
    (http_errors, "providers/base.py", "try:\n    pass\nexcept aiohttp.ClientError:\n    pass\n"),
    (http_errors, "engine/streaming.py", "try:\n    pass\nexcept orjson.JSONDecodeError:\n    pass\n"),
])
def test_the_owner_checks_catch_a_stray_call(tmp_path, check, module, source):
    root = tmp_path / "odie_async"
    for folder in ("engine", "cli", "pipeline", "quality", "viewer", "providers", "endpoints"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "cli" / "batch.py").write_text("import argparse\nimport sys\nsys.exit(2)\n")  # the edge may
    (root / "engine" / "flow.py").write_text("from .core import _private\n")  # within its subpackage
    (root / "engine" / "client.py").write_text(
        "try:\n    pass\nexcept (aiohttp.ClientError, asyncio.TimeoutError):\n    pass\n")  # the boundary
    assert check(root) == []
    (root / module).write_text(source)
    assert len(check(root)) == 1


def test_the_option_and_settings_modules_import_no_pipeline():
    """The settings model lives in engine/: options and the API's settings need nothing of the pipeline."""
    for module in ("options.py", "option_types.py", "engine/settings.py"):
        assert not [m for m in imports_of(PACKAGE / module, PACKAGE) if m.startswith("odie_async.pipeline")], module


def test_no_two_library_modules_share_a_file_name():
    """A name says where a module is: only a command (``cli/batch.py``) shares the name of the library
    module it is the shell of."""
    names: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name != "__init__.py" and relative.parts[0] != "cli":
            names.setdefault(path.name, []).append(str(relative))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}
