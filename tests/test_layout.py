"""The package's import rules, checked by walking every module's imports."""

from __future__ import annotations

import ast
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

