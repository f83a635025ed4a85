"""The shape of the package itself: folders by job whose imports only point down, every user-facing error
class in one module, short functions."""

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import mixer_ft
from conftest import REPO
from mixer_ft.errors import MixerFtError

PACKAGE = REPO / "mixer_ft"
# The layers, lowest first: a module may import its own layer's modules and lower layers', never a higher
# layer's, not even for type hints (README, "Code map"; each subpackage's __init__ says the same).
LAYERS = {"errors": 0, "atomic": 0, "gate": 0, "text": 0, "settings": 0, "publish": 0, "bounded": 0,
          "model": 1, "weights": 2, "data": 3, "train": 4, "use": 5, "report": 6,
          "cli": 7, "cli_checks": 7, "cli_tools": 7, "exits": 7, "launch": 7, "__init__": 7, "__main__": 8}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (the transformers code that model folders carry aside:
    it runs without mixer_ft and imports none of it)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports anywhere: at the top, in functions, under TYPE_CHECKING."""
    def resolve(name: str) -> str:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mixer_ft":
            out |= {resolve(f"{node.module}.{a.name}") for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "mixer_ft"}
    return out - {"mixer_ft"}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def test_every_module_belongs_to_a_layer_and_the_top_holds_only_the_command_line_and_its_foundations():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert top | folders <= set(LAYERS), (top | folders) - set(LAYERS)
    assert folders == {"model", "weights", "data", "train", "use", "report"}
    for folder in folders:  # each folder opens with its job and what it may import
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())) or ""
        assert "May import" in doc and len(doc.splitlines()) <= 5, folder


def test_imports_only_point_down_the_layers():
    known = modules()
    up = [f"{m} imports {d}" for m, path in known.items() for d in imports(path, known) if layer(d) > layer(m)]
    assert not up, up


def test_no_module_imports_itself_back_round_a_circle_even_for_type_hints():
    known = modules()
    graph = {m: imports(path, known) - {m} for m, path in known.items()}
    circles, state = [], {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                circles.append(trail[trail.index(d):] + [d])
            elif d not in state:
                visit(d, trail + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, circles


@pytest.mark.parametrize("planted", [
    "\n\ndef _planted():\n    from mixer_ft.train.loop import Run  # noqa\n",
    "\nif TYPE_CHECKING:\n    import mixer_ft.train.loop  # noqa\n",
], ids=["in-a-function", "type-only"])
def test_the_checks_see_an_upward_import_in_a_function_body_or_for_type_hints(tmp_path, planted):
    known = modules()
    copy = tmp_path / "cache.py"
    copy.write_text(PACKAGE.joinpath("data", "cache.py").read_text() + planted)
    assert "mixer_ft.train.loop" not in imports(PACKAGE / "data" / "cache.py", known)
    assert "mixer_ft.train.loop" in imports(copy, known) and layer("mixer_ft.train.loop") > layer("mixer_ft.data.cache")


def test_every_error_class_lives_in_errors_and_is_exported():
    import mixer_ft.errors as e

    assert e.DataError.__module__ == e.TrainingError.__module__ == "mixer_ft.errors"
    found = set()
    for info in pkgutil.walk_packages(mixer_ft.__path__, "mixer_ft."):
        if info.name == "mixer_ft.__main__" or ".remote_code." in info.name:
            continue
        module = importlib.import_module(info.name)
        found |= {c for _, c in inspect.getmembers(module, inspect.isclass) if issubclass(c, MixerFtError)}
    assert found and {c.__module__ for c in found} == {"mixer_ft.errors"}
    assert {c.__name__ for c in found} <= set(mixer_ft.__all__)


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not long, long


def test_the_readme_code_map_names_every_module_in_its_folder():
    import re

    text = (REPO / "README.md").read_text()
    table = text[text.index("## Code map"):].split("\n\n")[2]
    listed = {}
    for row in table.splitlines()[2:]:
        folder, _, names = [c.strip() for c in row.strip("|").split("|")]
        where = PACKAGE if folder == "top" else PACKAGE / folder.strip("`/")
        listed[where] = {n.rstrip("/") for n in re.findall(r"`([a-z0-9_]+/?)`", names) if not n.isupper()}
    for where, names in listed.items():
        present = {p.stem for p in where.glob("*.py") if p.stem not in ("__init__", "__main__")} | \
                  {p.name for p in where.iterdir() if (p / "__init__.py").is_file() and where != PACKAGE}
        assert names == present, (where.name, names ^ present)


def test_no_module_is_longer_than_450_lines_so_each_stays_one_job_read_in_one_sitting():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 450}
    assert not long, f"split these by job (README, 'Code map'): {long}"
