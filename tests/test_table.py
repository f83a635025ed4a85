"""`mixer-ft table` and `reproduce` from hand-made records, malformed ones among them."""

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, run_cli
from mixer_ft.data.sources import CIFAR10_CLASSES
from mixer_ft.report.table import COLUMNS, FEWSHOT_COLUMNS, build, render
from mixer_ft.train.recipe import load_recipe

ROWS = ["in1k_b16_cifar10", "in1k_l16_cifar10", "in21k_b16_cifar10", "in21k_l16_cifar10", "in21k_l16_imagenet",
        "scratch_cifar10"]


def protocol(recipe, **changes):
    """A record's config: the shipped recipe, run with other data set paths, seeds and folders."""
    return load_recipe(REPO / "recipes" / f"{recipe}.toml").to_dict() | changes


def record(name, upstream, model, dataset, acc, hours, count=1, recipe=None, **extra):
    recipe = recipe or (f"{upstream}_{model.replace('/', '').lower()}_{dataset}" if upstream != "none" else
                        "scratch_cifar10")
    config = protocol(recipe, dataset=dataset, seed=len(name), output_dir=f"runs/{name}", name=name)
    return {"record_version": 2, "name": name, "upstream": upstream, "model": model, "dataset": dataset, "test_accuracy": acc,
            "test_images": 10_000, "classes": CIFAR10_CLASSES, "wall_clock_s": hours * 3600,
            "hardware": {"device": "NVIDIA H200", "type": "cuda", "count": count}, "config": config, **extra}


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    recs = [
        record("l16_a", "in21k", "L/16", "cifar10", 0.9801, 2.0, count=4),
        record("l16_b", "in21k", "L/16", "cifar10", 0.9822, 1.5, count=2),  # the best of the row
        record("scratch", "none", "custom", "../shared/data/cifar10-jpeg.tar.gz", 0.7712, 0.6),  # a JPEG copy
        record("c100", "in21k", "B/16", "cifar100", 0.88, 3.0),  # matches no published row
    ]
    for r in recs:
        (d / f"{r['name']}.json").write_text(json.dumps(r))
    (d / "broken.json").write_text("{not json")
    (d / "partial.json").write_text(json.dumps({"upstream": "in1k", "model": "B/16"}))
    (d / "percent.json").write_text(json.dumps(record("pct", "in1k", "B/16", "cifar10", 96.5, 1.0)))
    return d


def test_best_run_per_row_unmatched_runs_and_malformed_records(results, caplog):
    rows, other = build(results)
    assert [r["id"] for r in rows] == ROWS
    by_id = {r["id"]: r for r in rows}
    l16 = by_id["in21k_l16_cifar10"]
    assert (l16["accuracy"], l16["delta_points"], l16["wall_clock_h"], l16["device_hours"], l16["hardware"]) == (
        0.9822, -0.12, 1.5, 3.0, "2x NVIDIA H200")
    assert (l16["runs"], l16["min_accuracy"]) == (2, 0.9801) and l16["mean_accuracy"] == pytest.approx(0.98115)
    assert by_id["scratch_cifar10"]["accuracy"] == 0.7712 and by_id["scratch_cifar10"]["delta_points"] == 21.5
    assert by_id["in1k_b16_cifar10"]["accuracy"] is None  # the percent-valued record was refused
    assert [o["dataset"] for o in other] == ["cifar100"]
    for bad in ("broken.json", "partial.json", "percent.json"):
        assert bad in caplog.text


def test_every_format(results):
    rows, other = build(results)
    text = render(rows, other, "table")
    assert "98.34%" in text and "98.22%" in text and "-0.12 pt" in text and "+21.50 pt" in text
    assert "no run yet for in1k_b16_cifar10: mixer-ft finetune --recipe recipes/in1k_b16_cifar10.toml" in text
    assert "Other runs" in text and "cifar100" in text
    best = next(r for r in rows if r["id"] == "in21k_l16_cifar10")["record"]
    assert f"in21k_l16_cifar10: best of 2 runs shown ({Path(best).name}); mean 98.11%, lowest 98.01%" in text
    assert "scratch_cifar10: best of" not in text  # one run has no spread to show
    md = render(rows, other, "markdown")
    assert md.splitlines()[1].startswith("|---|") and md.count("\n| in") >= 4
    table = list(csv.reader(io.StringIO(render(rows, other, "csv"))))
    assert table[0] == ["kind", *COLUMNS, *FEWSHOT_COLUMNS] and len(table) == 1 + 6 + 1
    unmatched = dict(zip(table[0], table[-1]))  # each value under its own column
    assert (unmatched["kind"], unmatched["dataset"], unmatched["accuracy"], unmatched["wall_clock_h"]) == (
        "other", "cifar100", "0.88", "3.0")
    assert (unmatched["runs"], unmatched["min_accuracy"], unmatched["published_accuracy"]) == ("1", "0.88", "")
    data = json.loads(render(rows, other, "json"))
    assert [list(r) for r in data["rows"]] == [list(COLUMNS)] * 6
    assert data["rows"][0]["accuracy"] is None and data["rows"][3]["accuracy"] == 0.9822


def cli(*args):
    return run_cli(*args, cwd=REPO)


def test_plot_is_a_readable_png(results, tmp_path):
    out = cli("table", "--results", str(results), "--plot", str(tmp_path / "t.png"), "--format", "markdown")
    assert out.returncode == 0, out.stderr
    with Image.open(tmp_path / "t.png") as im:
        assert im.format == "PNG" and im.size[0] >= 1000 and im.size[1] >= 400
        assert len(im.convert("RGB").getcolors(1 << 20)) > 10  # not a blank canvas


def test_bad_format_is_refused(results):
    out = cli("table", "--results", str(results), "--format", "xml")
    assert out.returncode == 2 and "--format must be one of" in out.stderr


def test_reproduce_skips_recorded_rows_and_reports_a_failing_one(results, capfd):
    out = cli("reproduce", "--rows", "in21k_l16_cifar10,scratch_cifar10", "--results", str(results))
    assert out.returncode == 0, out.stderr
    assert "in21k_l16_cifar10: already in" in out.stdout and "scratch_cifar10: already in" in out.stdout
    assert "98.22%" in out.stdout
    capfd.readouterr()
    out = cli("reproduce", "--rows", "in1k_b16_cifar10", "--results", str(results))
    row = capfd.readouterr().err  # each row runs as a process of its own, whose message goes to the terminal
    assert out.returncode == 2 and "Row in1k_b16_cifar10 failed" in out.stderr and "offline" in row.lower()
    out = cli("reproduce", "--rows", "in1k_x", "--results", str(results))
    assert out.returncode == 2 and "Unknown row(s) in1k_x" in out.stderr


def test_the_checkout_table_shows_the_published_rows_and_the_scratch_run():
    out = cli("table", "--format", "json")
    rows = json.loads(out.stdout)["rows"]
    assert len(rows) == 6 and [r["published_accuracy"] for r in rows] == [0.9672, 0.9659, 0.9682, 0.9834, 0.8289, 0.5562]
    recorded = json.loads((REPO / "results" / "scratch_cifar10_2026-12-08.json").read_text())
    assert rows[5]["accuracy"] == recorded["test_accuracy"]  # the committed from-scratch run scored on the image alone
    assert rows[4]["published_wall_clock_h"] is None  # the paper gives no fine-tune time


def test_a_row_counts_only_runs_made_with_its_protocol(results):
    # The smoke recipe on CIFAR-10 and a scratch run with another learning rate are other runs,
    # however close their upstream, model and data set are to the scratch row.
    smoke = record("smoke", "none", "custom", "cifar10", 0.3371, 0.01, recipe="smoke")
    tweaked = record("tweaked", "none", "custom", "cifar10", 0.79, 0.5)
    tweaked["config"]["lr"] = 0.01
    legacy = record("legacy", "in21k", "L/16", "cifar10", 0.99, 1.0)
    del legacy["config"]  # no recipe recorded: no way to know its protocol
    for r in (smoke, tweaked, legacy):
        (results / f"{r['name']}.json").write_text(json.dumps(r))
    rows, other = build(results)
    by_id = {r["id"]: r for r in rows}
    assert by_id["scratch_cifar10"]["runs"] == 1 and by_id["scratch_cifar10"]["accuracy"] == 0.7712
    assert by_id["in21k_l16_cifar10"]["runs"] == 2
    assert sorted(o["accuracy"] for o in other) == [0.3371, 0.79, 0.88, 0.99]


def test_the_readme_smoke_run_never_fills_the_scratch_row(smoke_run, tmp_path):
    run, rec, _ = smoke_run
    results = tmp_path / "results"  # the smoke record alone (the README's other commands write beside it)
    results.mkdir()
    shutil.copy(run.parent.parent / "results" / "smoke_cifar10.json", results)
    out = cli("table", "--results", str(results), "--format", "json")
    assert out.returncode == 0, out.stderr
    table = json.loads(out.stdout)
    assert all(r["accuracy"] is None for r in table["rows"])
    assert [o["accuracy"] for o in table["other_runs"]] == [rec["test_accuracy"]]
    out = cli("reproduce", "--rows", "scratch_cifar10", "--results", str(results), "--dataset", "/nowhere")
    assert "scratch_cifar10: already in" not in out.stdout  # not taken as done: it tries (and fails) to run it


def test_hostile_records_are_skipped_or_escaped_in_every_format(results):
    (results / "string_count.json").write_text(json.dumps(record("s", "in1k", "B/16", "cifar10", 0.9, 1.0)
                                                          | {"hardware": {"device": "x", "count": "4"}}))
    (results / "huge.json").write_text(json.dumps(record("h", "in1k", "B/16", "cifar10", 0.9, 1.0)).replace(
        '"wall_clock_s": 3600.0', '"wall_clock_s": 1e400'))
    (results / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (results / "list.json").write_text("[1]")
    os.mkfifo(results / "fifo.json")  # reading it would wait forever
    nasty = record("n", "in21k", "B/16", "=HYPERLINK(\"http://x\")|a\nb", 0.5, 1.0, recipe="in21k_b16_cifar100",
                   classes=["a", "b"])
    (results / "nasty.json").write_text(json.dumps(nasty))
    out = cli("table", "--results", str(results), "--format", "json")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    doc = json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert {o["dataset"] for o in doc["other_runs"]} == {"cifar100", nasty["dataset"]}
    for bad in ("string_count.json", "huge.json", "deep.json", "list.json", "fifo.json"):
        assert f"skipping {results / bad}" in out.stderr, bad
    cells = [c for row in csv.reader(io.StringIO(cli("table", "--results", str(results), "--format", "csv").stdout))
             for c in row]
    # one line per CSV row too: the newline written as its escape
    assert "'" + nasty["dataset"].replace("\n", "\\n") in cells and not any(c.startswith(("=", "@")) for c in cells)
    md = cli("table", "--results", str(results), "--format", "markdown").stdout
    row = next(line for line in md.splitlines() if "HYPERLINK" in line)
    assert row.count(" | ") == 6 and "\\|a\\\\nb" in row  # the pipe escaped, the newline too: one row, seven cells


def test_an_imagenet_run_matches_the_imagenet_row_and_reproduce_asks_for_imagenets_data(tmp_path):
    """Any copy of ImageNet-1k (1,000 classes, 50,000 test images: a folder or shards, under any path) is
    "imagenet"; `reproduce` leaves the row out unless named, and then wants --dataset."""
    from mixer_ft.data.cache import canonical_dataset

    assert canonical_dataset("/data/ilsvrc/shards", [f"n{i:08d}" for i in range(1000)], 50_000) == "imagenet"
    d = tmp_path / "results"
    d.mkdir()
    run = record("inet", "in21k", "L/16", "imagenet", 0.83, 30.0)
    run["config"] = protocol("in21k_l16_imagenet", dataset="/data/ilsvrc/shards", seed=1, output_dir="runs/inet",
                             name="inet")
    run |= {"dataset": "/data/ilsvrc/shards", "classes": [f"n{i:08d}" for i in range(1000)], "test_images": 50_000}
    (d / "inet.json").write_text(json.dumps(run))
    row = next(r for r in build(d)[0] if r["id"] == "in21k_l16_imagenet")
    assert (row["accuracy"], row["delta_points"]) == (0.83, 0.11)
    from mixer_ft.report.table import default_rows, published_rows

    assert "in21k_l16_imagenet" not in [r.id for r in default_rows(published_rows())]
    out = cli("reproduce", "--rows", "in21k_l16_imagenet", "--results", str(d))
    assert out.returncode == 2 and "pass --dataset" in out.stderr and "Traceback" not in out.stderr
