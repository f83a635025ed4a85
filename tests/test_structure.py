"""The shape of the package itself: every user-facing error class in one module, short functions."""

import ast
import importlib
import inspect
import pkgutil

import mixer_ft
from conftest import REPO
from mixer_ft.errors import MixerFtError


def test_every_error_class_lives_in_errors_and_is_exported():
    import mixer_ft.errors as e

    assert e.DataError.__module__ == e.TrainingError.__module__ == "mixer_ft.errors"
    found = set()
    for info in pkgutil.iter_modules(mixer_ft.__path__):
        if info.name == "__main__":
            continue
        module = importlib.import_module(f"mixer_ft.{info.name}")
        found |= {c for _, c in inspect.getmembers(module, inspect.isclass) if issubclass(c, MixerFtError)}
    assert found and {c.__module__ for c in found} == {"mixer_ft.errors"}
    assert {c.__name__ for c in found} <= set(mixer_ft.__all__)


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted((REPO / "mixer_ft").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.name}:{node.lineno} {node.name}")
    assert not long, long
