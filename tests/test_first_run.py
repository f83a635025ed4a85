"""The first run on your own photos (issue 44): a small set trains by default, the check before a run says every
problem at once, what a run chooses is said (precision, threads, batch, files it does not read), its curve is a
file any tool opens (metrics.csv) and a picture (mixer-ft plot), and each number means one thing."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_invariants import TINY, jpeg, one_error_line, photo_folder

from conftest import REPO, run_cli


def test_the_readmes_own_photos_folder_trains_by_default_its_batch_cut_to_the_set_and_the_rate_with_it(tmp_path):
    """examples/photos/ holds 10 training images: the protocol's batch 512 becomes 8 (the largest power of two not
    above them), the rate 0.03 x 8/512, said in one line and in --dry-run; a rate given on the command line is the
    run's own, and lr_scaling chooses how it follows otherwise."""
    photos = REPO / "examples" / "photos"
    out = run_cli("finetune", "--upstream", "none", "--model", "S/32", "--dataset", photos, "--steps", 2,
                  "--output-dir", tmp_path / "run", "--set", f'results_dir="{tmp_path / "results"}"', cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "global batch 8 (of 512: the 10 training images are fewer), lr 0.000469 (scaled linearly from 0.03)" in out.stdout
    record = json.loads((tmp_path / "results" / "run.json").read_text())
    assert record["global_batch"] == 8 and record["config"]["lr"] == pytest.approx(0.03 * 8 / 512)
    dry = run_cli("finetune", "--upstream", "none", "--model", "S/32", "--dataset", photos, "--dry-run",
                  "--set", 'lr_scaling="sqrt"').stdout
    assert "global_batch = 8  # rule (the global batch 512 is more than the 10 training images" in dry
    assert f"lr = {0.03 * (8 / 512) ** 0.5!r}  # rule (0.03 scaled with the batch" in dry
    given = run_cli("finetune", "--upstream", "none", "--model", "S/32", "--dataset", photos, "--dry-run", "--lr", 0.01)
    assert "global_batch = 8" in given.stdout and "lr = 0.01  # flag" in given.stdout


def test_the_check_before_a_run_names_every_problem_at_once(tmp_path):
    data = photo_folder(tmp_path / "photos")
    out = run_cli("finetune", "--upstream", "in21k", "--model", "B/16", "--dataset", data, "--set", 'tracker="wandb"',
                  "--output-dir", tmp_path / "run", env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "the in21k B/16 weights" in out.stderr and "the tracker wandb: its package is not installed" in out.stderr
    alone = one_error_line(run_cli("finetune", "--dataset", data, "--set", 'tracker="wandb"', *TINY, "--steps", 1,
                                   "--output-dir", tmp_path / "run2", cwd=tmp_path))
    assert "tracker wandb: its package is not installed here: pip install wandb" in alone
    assert not (tmp_path / "run2").exists()  # said before the run began


def test_a_run_says_what_it_chose_and_writes_its_curve_as_csv_and_a_picture(tmp_path):
    data = photo_folder(tmp_path / "photos", per_class=10)
    out = run_cli("finetune", "--dataset", data, "--steps", 6, "--batch", 4, "--warmup", 0, "--set", "log_every=2",
                  "--set", "eval_every=3", "--set", "val_fraction=0.25", "--output-dir", tmp_path / "run", "--set",
                  f'results_dir="{tmp_path / "results"}"', *TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mixed precision: " in out.stdout and "(auto: this CPU" in out.stdout
    assert "threads: " in out.stdout and "OMP_NUM_THREADS sets another" in out.stdout
    record = json.loads((tmp_path / "results" / "run.json").read_text())
    assert record["threads"]["threads"] >= 1 and record["record_version"] == 2
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 6]  # log lines at 2, 4, 6; minival at 3 and the end
    losses = {e["step"]: e["loss"] for e in record["history"]["loss"]}
    assert all(float(r["loss"]) == losses[int(r["step"])] for r in rows if r["loss"])
    assert rows[1]["minival_accuracy"] and not rows[1]["loss"] and rows[-1]["minival_accuracy"]
    shown = run_cli("plot", tmp_path / "run")
    assert shown.returncode == 0 and Image.open(tmp_path / "run" / "curve.png").size[0] > 500
    assert run_cli("plot", tmp_path / "results" / "run.json", "--output", tmp_path / "c.png").returncode == 0
    assert "is neither a run folder" in one_error_line(run_cli("plot", tmp_path / "photos"))
    listed = json.loads((tmp_path / "run" / ".mixer-ft-files.json").read_text())["files"]
    assert "metrics.csv" in listed and "curve.png" in listed  # --fresh takes them with the run


def test_files_not_read_and_images_outside_the_class_folders_are_named(tmp_path, caplog, monkeypatch):
    from mixer_ft.data import folder
    from mixer_ft.data.cache import load_data

    data = photo_folder(tmp_path / "photos")
    (data / "notes.txt").write_text("my notes")
    jpeg(data / "stray.jpg", seed=5)
    (data / "cat" / "IMG_0001.heic").write_bytes(b"pretend")
    monkeypatch.setattr(folder, "heif_readable", lambda: False)  # as on a machine without pillow-heif
    load_data(str(data))
    text = caplog.text
    assert "files that are not images it reads are not used: cat/IMG_0001.heic, notes.txt" in text
    assert "pip install 'mixer_ft[heif]'" in text and "images outside the class folders are not used: stray.jpg" in text


def test_a_heic_photo_is_read_where_pillow_heif_is_installed(tmp_path):
    pytest.importorskip("pillow_heif")
    from pillow_heif import register_heif_opener

    from mixer_ft.use.infer import as_rgb_array, collect_images

    register_heif_opener()
    data = photo_folder(tmp_path / "photos")
    picture = np.zeros((48, 64, 3), np.uint8) + np.array([200, 40, 40], np.uint8)
    Image.fromarray(picture).save(data / "cat" / "phone.heic")
    info = json.loads(run_cli("data", data, "--json").stdout)
    assert sum(info["class_counts"][s]["cat"] for s in ("train", "minival", "test")) == 6 and info["skipped"] == 0
    assert data / "cat" / "phone.heic" in collect_images([str(data / "cat")])  # predict takes it from a folder
    assert np.abs(as_rgb_array(data / "cat" / "phone.heic").astype(int).mean((0, 1)) - [200, 40, 40]).max() < 8


def test_a_streamed_minival_of_whole_shards_says_its_share(tmp_path, cifar_subset):
    from test_shards import CLASSES, images_of, write_shards

    cut, shards = cifar_subset(train=6, test=2), tmp_path / "shards"
    write_shards(shards, "train", images_of(cut, "train"), per_shard=20)
    write_shards(shards, "test", images_of(cut, "test"), per_shard=20)
    (shards / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    out = run_cli("finetune", "--dataset", shards, "--streaming", "--steps", 2, "--batch", 8, "--output-dir",
                  tmp_path / "run", "--set", f'results_dir="{tmp_path / "results"}"', *TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "the minival is 1 whole train shard(s) of 3: 33% of the train shards held out for val_fraction 0.02" in out.stderr


def test_a_records_accuracy_means_the_image_alone_and_old_records_of_views_are_labelled_not_ranked(tmp_path):
    """Records before version 2 of recipes with test-time views hold the views' accuracy as test_accuracy: they rank
    for no row and show as views'; a version-2 record of the same recipe ranks by its single-view accuracy."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results, ignore=shutil.ignore_patterns("bench", "transfer", "fewshot_*",
                                                                             "scratch_cifar10_2026-*"))
    old = json.loads((results / "scratch_cifar10.json").read_text())
    assert old["record_version"] == 1 and old["config"]["eval_flip"] and "test_accuracy_views" not in old
    table = run_cli("table", "--results", results).stdout
    assert "75.75% (with test-time views)" in table and "scored only with test-time views" in table
    rows = json.loads(run_cli("table", "--results", results, "--format", "json").stdout)["rows"]
    assert next(r for r in rows if r["model"] == "small Mixer")["accuracy"] is None  # views rank for no row
    new = old | {"record_version": 2, "test_accuracy": 0.7412, "test_accuracy_views": 0.7575, "run_id": "new"}
    (results / "scratch_cifar10_new.json").write_text(json.dumps(new))
    rows = json.loads(run_cli("table", "--results", results, "--format", "json").stdout)["rows"]
    scratch = next(r for r in rows if r["model"] == "small Mixer")
    assert scratch["accuracy"] == 0.7412 and scratch["runs"] == 1
