"""What 0.1.0 wrote still loads: its run folder resumes, its model folder and checkpoints load as weights,
its record is in the table.

tests/fixtures/made_by_0.1.0/ was written by 0.1.0 (commit 45edcd3), from the repository root:

    git archive 45edcd3 mixer_ft | tar -x -C /tmp/v010
    PYTHONPATH=/tmp/v010 python -P -m mixer_ft finetune --upstream none --dataset examples/photos/ --steps 6 \\
      --batch 8 --warmup 2 --eval-every 3 --set checkpoint_every=3 --set log_every=3 --set 'model="custom"' \\
      --set architecture.patch_size=8 --set architecture.hidden_dim=16 --set architecture.num_blocks=1 \\
      --set architecture.tokens_mlp_dim=8 --set architecture.channels_mlp_dim=32 --set architecture.img_size=32 \\
      --set 'momentum_dtype="bfloat16"' --set 'results_dir="/tmp/fx/results"' --set 'name="made_by_0.1.0"' \\
      --output-dir /tmp/fx/made_by_0.1.0

(its run folder's checkpoints/, model/ and record.json, and the record in results/).
"""

import json
import shutil

import torch
from safetensors.torch import load_file

from conftest import REPO, run_cli

OLD = REPO / "tests" / "fixtures" / "made_by_0.1.0"
COMMAND = ["finetune", "--upstream", "none", "--dataset", "examples/photos/", "--steps", 6, "--batch", 8, "--warmup", 2,
           "--eval-every", 3, "--set", "checkpoint_every=3", "--set", "log_every=3", "--set", 'model="custom"',
           "--set", "architecture.patch_size=8", "--set", "architecture.hidden_dim=16", "--set",
           "architecture.num_blocks=1", "--set", "architecture.tokens_mlp_dim=8", "--set",
           "architecture.channels_mlp_dim=32", "--set", "architecture.img_size=32", "--set", 'momentum_dtype="bfloat16"',
           "--set", 'name="made_by_0.1.0"']


def test_a_run_folder_written_by_0_1_0_resumes_from_its_checkpoint_and_ends_at_its_own_final_weights(tmp_path):
    run = tmp_path / "made_by_0.1.0"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("step_00000003.pt", "step_00000003.pt.sha256"):  # the final checkpoint and model left behind
        shutil.copy(OLD / "checkpoints" / name, run / "checkpoints" / name)
    out = run_cli(*COMMAND, "--output-dir", run, "--set", f'results_dir="{tmp_path / "results"}"', cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming {run} at step 3/6" in out.stdout + out.stderr
    ours, theirs = load_file(run / "model" / "model.safetensors"), load_file(OLD / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for k in ours:  # the same three steps (bf16 momentum from 0.1.0's buffers): within float rounding of other CPUs
        torch.testing.assert_close(ours[k], theirs[k], atol=1e-5, rtol=0, msg=k)
    record = json.loads((tmp_path / "results" / "made_by_0.1.0.json").read_text())
    old = json.loads((OLD / "record.json").read_text())
    assert record["run_id"] == old["run_id"] and record["steps"] == 6  # the same run, continued


def test_a_0_1_0_model_folder_and_its_checkpoints_load_as_weights_and_predict():
    from mixer_ft import Classifier, load_checkpoint

    folder, checkpoint = load_checkpoint(str(OLD / "model")), load_checkpoint(str(OLD / "checkpoints" / "step_00000006.pt"))
    assert folder.classes == checkpoint.classes == ["circle", "square"]
    assert folder.config() == checkpoint.config() and folder.config().hidden_dim == 16
    assert all(torch.equal(folder.state_dict[k], checkpoint.state_dict[k]) for k in folder.state_dict)
    top = Classifier.from_pretrained(str(OLD / "model"))(str(REPO / "examples" / "photos" / "circle" / "0.jpg"), top_k=2)
    assert sorted(t["label"] for t in top) == ["circle", "square"] and abs(sum(t["score"] for t in top) - 1) < 1e-5
    out = run_cli("predict", OLD, REPO / "examples" / "photos", "--json")  # the run folder names its model
    assert out.returncode == 0 and len([line for line in out.stdout.splitlines() if line.strip()]) >= 10, out.stderr


def test_a_0_1_0_record_is_in_the_table():
    out = run_cli("table", "--results", OLD / "results", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    text = json.dumps(rows)
    assert "examples/photos/" in text and "1.0" in text
