"""Every command the README and docs/ show exists, parses and runs (offline, where it needs no download)."""

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer

from conftest import REPO, SMOKE_COMMAND, run_cli
from mixer_ft.cli import app

README = (REPO / "README.md").read_text()
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README] + [page.read_text() for page in DOCS]  # the README and every docs page


def bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def quickstart_commands():
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [line for block in bash_blocks(section) for line in block.splitlines() if line.strip()]


def invocations(program="mixer-ft"):
    """Each `mixer-ft ...` (or `accelerate launch ...`) in any bash block of the README or docs/, as word lists."""
    found = []
    for block in (b for page in PAGES for b in bash_blocks(page)):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part)
                if words[:1] == [program]:
                    found.append(words[1:])
    return found


def mixer_ft_invocations():
    return invocations("mixer-ft")


@pytest.fixture(scope="module")
def workdir(readme_workdir, smoke_run):
    """The README's folder (see conftest.readme_workdir), where its smoke run has been made once."""
    return readme_workdir


def test_the_readme_is_a_front_door_and_links_every_docs_page():
    assert len(README.splitlines()) <= 200
    assert DOCS and all(f"docs/{page.name}" in README for page in DOCS)


def test_quickstart_is_two_commands_install_and_run_then_test():
    cmds = quickstart_commands()
    assert len(cmds) == 2
    assert cmds[0].startswith("pip install . && mixer-ft ")
    assert cmds[1].startswith("pip install -e '.[test]' && ")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "test" in extras


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert quickstart_commands()[1] in ci
    assert any(line.startswith("python3 -m venv") for line in ci)


def test_every_readme_command_parses():
    cli = typer.main.get_command(app)
    invocations = mixer_ft_invocations()
    assert len(invocations) >= 10
    for args in invocations:
        with cli.make_context("mixer-ft", list(args), resilient_parsing=False) as ctx:
            sub = cli.get_command(ctx, args[0])
            assert sub is not None, f"README shows unknown command {args[0]!r}"
            sub.make_context(args[0], list(args[1:]), parent=ctx)  # raises click.UsageError if bad


@pytest.mark.slow
def test_every_readme_command_runs_or_only_lacks_a_download(workdir, capfd):
    commands = mixer_ft_invocations()
    assert len(commands) >= 10 and list(SMOKE_COMMAND) in commands  # conftest's smoke run is the README's
    for args in commands:  # in this process, through the console script's entry point
        capfd.readouterr()
        if args[0] == "bench":  # as shown, with 2 timed steps instead of 20 (test_bench checks its output)
            args = [*args, "--steps", "2"]
        out = run_cli(*args, cwd=workdir)
        stderr = out.stderr + capfd.readouterr().err  # `reproduce` runs each row as a process of its own
        if out.returncode != 0:  # allowed only for a download, which offline CI can't make
            assert "error: " in stderr and "offline" in stderr.lower(), (args, stderr[-2000:])
            assert out.returncode == 2, (args, out.returncode)
    launches = invocations("accelerate")
    assert launches
    for args in launches:  # `accelerate launch` starts processes of its own
        out = subprocess.run([str(Path(sys.executable).parent / "accelerate"), *args], capture_output=True, text=True,
                             env=os.environ.copy(), timeout=600, cwd=workdir)
        if out.returncode != 0:
            assert "error: " in out.stderr and "offline" in out.stderr.lower(), (args, out.stderr[-2000:])
    assert (workdir / "results" / "smoke_cifar10.json").is_file()


def test_the_readme_python_api_example_runs(workdir):
    # After the commands above: runs/smoke_cifar10 is the README's smoke run.
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "Classifier" in b]
    assert len(blocks) == 1 and (workdir / "runs" / "smoke_cifar10" / "model").is_dir()
    scope: dict = {}
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        exec(compile(blocks[0], "README.md", "exec"), scope)
        one = scope["classify"]("examples/photos/circle/0.jpg", top_k=3)
        both = scope["classify"](["examples/photos/circle/0.jpg"] * 2)
    finally:
        os.chdir(cwd)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(one) == 3 and one[0]["label"] in classes and len(both) == 2 and both[0] == both[1]
