"""Installing sftdata must not pull torch: torch and peft belong to sfttrain's extra only."""

import tomllib

from .conftest import REPO


def test_sftdata_dependencies_leave_out_torch_and_peft():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    assert "torch" not in base and "peft" not in base
    train = " ".join(project["optional-dependencies"]["train"]).lower()
    assert "torch" in train and "peft" in train


def test_sftdata_modules_do_not_import_torch():
    import ast

    for path in (REPO / "sftdata").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in getattr(node, "names", [])}
        modules = {node.module.split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and node.module}
        assert "torch" not in names | modules, f"{path.name} imports torch"
