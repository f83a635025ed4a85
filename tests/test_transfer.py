"""The transfer experiment's scripts (benchmarks/transfer/), end to end on a small cut of CIFAR-10 with
training cut to a few steps: the data split, every command the driver runs, the report's table and figure."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_the_transfer_experiment_runs_end_to_end_and_reports_every_arm(readme_workdir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "recipes").symlink_to(REPO / "recipes")
    archive = readme_workdir.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"  # 100 train, 20 test a class

    def script(name, *args):
        out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transfer" / name), *args], cwd=work,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        return out.stdout

    script("make_data.py", f"--archive={archive}", "--sizes=10", "--seeds=0,1")
    data = work / "runs" / "transfer" / "data"
    assert sorted(p.name for p in (data / "upstream" / "train").iterdir()) == [
        "bird", "cat", "deer", "dog", "frog", "horse"]
    down = {p.name: len(list(p.iterdir())) for p in (data / "downstream_n10_s1" / "train").iterdir()}
    assert down == {"airplane": 10, "automobile": 10, "ship": 10, "truck": 10}
    assert {p.name for p in (data / "downstream_n10_s0" / "train" / "ship").iterdir()} != {
        p.name for p in (data / "downstream_n10_s1" / "train" / "ship").iterdir()}  # each seed its own draw

    log = script("run.py", "--sizes=10", "--seeds=0,1", "--set=steps=2", "--set=warmup_steps=1")
    results = work / "results" / "transfer"
    upstream = json.loads((results / "transfer_upstream_animals.json").read_text())
    assert upstream["steps"] == 2 and len(upstream["classes"]) == 6
    for arm, grid in (("scratch", 3), ("finetune", 4)):
        sweep = json.loads((results / f"sweep_transfer_{arm}_n10_s0.json").read_text())
        assert len(sweep["points"]) == grid and sweep["kind"] == "sweep"
        seed1 = json.loads((results / f"transfer_{arm}_n10_s1.json").read_text())
        assert seed1["classes"] == ["airplane", "automobile", "ship", "truck"] and seed1["test_images"] == 80
        assert seed1["config"]["lr"] == sweep["chosen"]["lr"]  # the lr chosen on minival
    fine = json.loads((results / "transfer_finetune_n10_s1.json").read_text())
    assert fine["config"]["upstream"] == "runs/transfer_upstream_animals/model" and fine["head"].startswith("new")
    shifted = json.loads((results / "transfer_finetuneshift_n10_s1.json").read_text())["config"]
    assert (shifted["crop_area_min"], shifted["translate"], shifted["lr"]) == (1.0, 2, fine["config"]["lr"])
    wide = json.loads((results / "sweep_transfer_finetunewide_n10_s0.json").read_text())
    assert [p["settings"]["lr"] for p in wide["points"]] == [0.06, 0.1]
    assert log.count("$ mixer-ft") == 9  # upstream, 3 sweeps, 2 seed-1 runs, 2 shifted runs, few-shot
    fewshot = json.loads(next(results.glob("fewshot_*.json")).read_text())
    assert list(fewshot["shots"]) == ["10"] and len(fewshot["shots"]["10"]["per_seed"]) == 2

    again = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transfer" / "run.py"), "--sizes=10", "--seeds=0,1",
                            "--set=steps=2"], cwd=work, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "$ mixer-ft" not in again.stdout  # every step's record is there: none runs twice
    assert "skipped 9 of 9 steps whose records are in results/transfer already (all of them" in again.stderr
    assert "run.py --results results/transfer-rerun" in again.stderr  # and how to run them again

    table = script("report.py", f"--results={results}", f"--figure={tmp_path / 'transfer.png'}")
    row = next(line for line in table.splitlines() if line.startswith("| 10 |"))
    assert row.count("(2)") == 4  # four arms, two seeds each; the wider sweep is not one of them
    beyond = next(line for line in table.splitlines() if line.startswith("| 10 |") and "/" in line)
    assert beyond.count("/") == 6  # the paper's 4 lrs and the 2 beyond, minival / test each
    assert (tmp_path / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name,args,needle", [
    ("make_data.py", ["--archive=missing.tar.gz"], "no archive at missing.tar.gz"),
    ("make_data.py", ["--archive=damaged.tar.gz"], "cannot unpack damaged.tar.gz"),
    ("run.py", [], "run benchmarks/transfer/make_data.py first"),
    ("report.py", [], "run benchmarks/transfer/run.py first")])
def test_the_transfer_scripts_say_what_is_missing_in_one_line(tmp_path, name, args, needle):
    (tmp_path / "damaged.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transfer" / name), *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and needle in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")} - {"damaged.tar.gz"}
    assert left <= {"runs", "runs/transfer", "runs/transfer/data"}  # at most the empty output folder
