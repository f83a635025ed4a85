"""`mixer-ft fewshot`: the closed-form least-squares fit, its use on real CIFAR-10 JPEGs through the
CLI, its record and table section, and the requests it refuses."""

import json

import numpy as np
import pytest

from conftest import REPO, run_cli
from mixer_ft.use.fewshot import lsr_accuracy, lsr_weights


@pytest.mark.parametrize("n, d", [(40, 12), (12, 40)])  # more points than features, and fewer
def test_lsr_weights_are_the_ridge_solution_from_either_system(n, d):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, 3))
    # Ridge as one ordinary least-squares problem: [X; sqrt(l2) I] W = [Y; 0].
    stacked = np.vstack([x, np.sqrt(7.0) * np.eye(d)])
    want = np.linalg.lstsq(stacked, np.vstack([y, np.zeros((d, 3))]), rcond=None)[0]
    np.testing.assert_allclose(lsr_weights(x, y, 7.0), want, rtol=1e-8, atol=1e-10)


def test_lsr_separates_informative_features_and_not_noise():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((5, 30)) * 3

    def sample(per_class):
        y = np.repeat(np.arange(5), per_class)
        return centres[y] + rng.standard_normal((len(y), 30)), y

    (x, y), (xt, yt) = sample(5), sample(40)
    assert lsr_accuracy(x, y, xt, yt, 5) > 0.95
    assert lsr_accuracy(x, rng.permutation(y), xt, yt, 5) < 0.5  # labels carry no signal: near chance (0.2)


def cli(*args):
    return run_cli(*args, cwd=REPO)


def test_fewshot_on_real_images_reports_mean_and_std_and_a_record_the_table_lists_apart(smoke_run, tmp_path):
    run, _, cut = smoke_run
    out = cli("fewshot", "--upstream", run / "model", "--dataset", cut, "--shots", "1,5,10", "--seeds", 3,
              "--results", tmp_path / "results", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert list(got["shots"]) == ["1", "5", "10"] and got["seeds"] == 3 and got["l2_reg"] == 1024
    for r in got["shots"].values():
        assert len(r["per_seed"]) == 3 and r["mean"] == pytest.approx(np.mean(r["per_seed"]), abs=1e-5)
        assert r["std"] == pytest.approx(np.std(r["per_seed"], ddof=1), abs=1e-5)
    assert got["shots"]["10"]["mean"] > 0.18, got  # chance is 0.10 on CIFAR-10's 10 classes
    assert got["test_images"] == 200
    record = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert record["kind"] == "fewshot" and record["shots"] == got["shots"]
    assert record["feature_images"] <= 3 * 10 * 10  # each drawn image once, whatever the shots and seeds

    # The table lists it in its own section; the fine-tune rows do not count it as a run.
    table = cli("table", "--results", tmp_path / "results", "--format", "json")
    doc = json.loads(table.stdout)
    assert doc["fewshot"][0]["shots"] == got["shots"] and doc["other_runs"] == []
    assert all(r["accuracy"] is None for r in doc["rows"])
    text = cli("table", "--results", tmp_path / "results").stdout
    assert "Few-shot linear evaluation" in text and "10-shot" in text and "skipping" not in table.stderr


@pytest.mark.parametrize("extra, needle", [
    (["--shots", "1,500"], "500 shots need 500 training images per class"),
    (["--shots", "1,x"], "--shots takes whole numbers"),
    (["--split", "validation"], "Unknown split 'validation'"),
    (["--img-size", "50"], "sizes near it that work: 48, 52"),
])
def test_fewshot_requests_that_cannot_be_met_exit_2(smoke_run, tmp_path, extra, needle):
    run, _, cut = smoke_run
    out = cli("fewshot", "--upstream", run / "model", "--dataset", cut, "--results", tmp_path, *extra)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_fewshot_on_a_data_set_of_one_class_exits_2(smoke_run, tmp_path):
    import shutil

    run, _, cut = smoke_run
    for split in ("train", "test"):
        shutil.copytree(cut / split / "cat", tmp_path / "one" / split / "cat")
    out = cli("fewshot", "--upstream", run / "model", "--dataset", tmp_path / "one", "--results", tmp_path)
    assert out.returncode == 2 and "needs at least two" in out.stderr, out.stderr[-2000:]
