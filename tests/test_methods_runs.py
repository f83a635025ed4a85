"""The fine-tuning methods in whole runs on real CIFAR-10 images: a LoRA run with every regulariser killed and
resumed ends as the uninterrupted one; its model folder is a plain Mixer and its adapter rebuilds it; early
stopping keeps the best; an exported ONNX file computes torch's logits in onnxruntime."""

import json
import re
import signal
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import randomize_, run_cli, signal_once_written
from mixer_ft import create_model
from mixer_ft.model.mixer import MixerConfig, MlpMixer
from mixer_ft.train.methods import ADAPTER_NAME, apply_method, load_adapter, saved_model
from mixer_ft.train.recipe import Recipe
from mixer_ft.weights.model_folder import save_pretrained

TINY = MixerConfig(patch_size=8, hidden_dim=32, num_blocks=2, tokens_mlp_dim=16, channels_mlp_dim=64, img_size=32, gelu="exact",
                   num_classes=10)


@pytest.fixture(scope="module")
def cut(cifar_subset):
    return cifar_subset(train=30, test=10)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    path = tmp_path_factory.mktemp("upstream") / "tiny.safetensors"
    save_file(randomize_(MlpMixer(TINY), seed=5).state_dict(), path)
    return path


def args(tmp, cut, name, *extra):
    return ["finetune", "--dataset", cut, "--output-dir", tmp / name, "--set", f'results_dir="{tmp / "results"}"',
            "--set", f'name="{name}"', "--mixed-precision", "no", *map(str, extra)]


def killed_and_resumed(tmp_path, cut, common: list) -> dict:
    """Run ``common`` whole, and again SIGKILLed after its step-16 checkpoint and resumed; assert both end alike
    (model, adapter, losses, minival, test accuracy, bit for bit); return the whole run's record."""
    whole = run_cli(*args(tmp_path, cut, "whole", *common))
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert re.search(r"method \w+: [\d,]+ of [\d,]+ parameters train \(", whole.stdout + whole.stderr)
    ckpt = tmp_path / "killed" / "checkpoints" / "step_00000016.pt"
    signal_once_written([sys.executable, "-m", "mixer_ft", *args(tmp_path, cut, "killed", *common)], ckpt,
                        signal.SIGKILL)
    assert ckpt.exists() and not (tmp_path / "killed" / "model").exists(), "killed before the end"
    resumed = run_cli(*args(tmp_path, cut, "killed", *common))
    assert resumed.returncode == 0 and "resuming" in resumed.stdout + resumed.stderr, resumed.stderr[-2000:]
    for name in ("model/model.safetensors", ADAPTER_NAME):
        a, b = (load_file(tmp_path / run / name) for run in ("whole", "killed"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ra, rb = (json.loads((tmp_path / "results" / f"{n}.json").read_text()) for n in ("whole", "killed"))
    kept = ("step", "loss", "train_accuracy", "lr")  # not the rate or the clock
    assert [{k: e[k] for k in kept} for e in ra["history"]["loss"]] == [{k: e[k] for k in kept} for e in rb["history"]["loss"]]
    assert ra["history"]["minival"] == rb["history"]["minival"] and ra["test_accuracy"] == rb["test_accuracy"]
    return ra


STEPS = ["--steps", 24, "--batch", 32, "--warmup", 2, "--eval-every", 4, "--set", "checkpoint_every=8", "--set",
         "log_every=4", "--set", "val_fraction=0.1"]


@pytest.mark.parametrize("method", ["bitfit", "head"])
def test_a_frozen_backbone_run_killed_and_resumed_ends_as_the_uninterrupted_one(tmp_path, cut, upstream, method):
    record = killed_and_resumed(tmp_path, cut, ["--upstream", upstream, "--lr", 0.3, *STEPS, "--set", f'method="{method}"'])
    assert record["weights"] == "last step" and record["parameters"]["trained"] < record["parameters"]["model"] / 10
    frozen, saved = load_file(upstream), load_file(tmp_path / "whole" / "model" / "model.safetensors")
    assert torch.equal(saved["blocks.0.mlp_tokens.fc1.weight"], frozen["blocks.0.mlp_tokens.fc1.weight"])
    moved = not torch.equal(saved["blocks.0.norm1.bias"], frozen["blocks.0.norm1.bias"])
    assert moved == (method == "bitfit")


def test_a_lora_run_with_every_regulariser_killed_and_resumed_ends_as_the_uninterrupted_one(tmp_path, cut, upstream):
    common = ["--upstream", upstream, "--lr", 0.05, *STEPS, "--set", 'method="lora"', "--set", "lora_rank=2",
              "--set", "ema_decay=0.8", "--set", "mixup=0.8", "--set", "cutmix=1.0", "--set",
              'class_weights="balanced"', "--set", "layer_decay=0.8", "--set", "early_stop=50", "--set",
              "lora_dropout=0.1"]
    ra = killed_and_resumed(tmp_path, cut, common)
    assert ra["weights"].startswith("best minival (step ") and ra["early_stop"]["stopped_at"] is None

    # The model folder is a plain Mixer (timm loads it strictly); the upstream weights with the adapter are it.
    folder = tmp_path / "whole" / "model"
    assert not any("lora" in k for k in load_file(folder / "model.safetensors"))
    saved = create_model(pretrained=str(folder)).eval()
    rebuilt = load_adapter(create_model(pretrained=str(upstream), num_classes=10), tmp_path / "whole" / ADAPTER_NAME)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), saved(x), atol=1e-5, rtol=1e-5)
        moved = (saved.blocks[0].mlp_tokens.fc1.weight - create_model(pretrained=str(upstream)).blocks[0].mlp_tokens.fc1.weight)
    assert moved.abs().max() > 0, "LoRA's update is merged into the weights"
    # Its checkpoint is a model too (`predict RUN` while it trains): the updates merged as the model folder's are.
    ckpt = tmp_path / "whole" / "checkpoints" / "step_00000024.pt"
    trained = apply_method(MlpMixer(TINY), Recipe(method="lora", lora_rank=2))
    trained.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    with torch.no_grad():
        from_ckpt = create_model(pretrained=str(ckpt)).eval()(x)
        torch.testing.assert_close(from_ckpt, saved_model(trained).eval()(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(from_ckpt, trained.eval()(x), atol=1e-5, rtol=1e-5)  # unmerged: float rounding
    frozen = load_file(upstream)
    assert torch.equal(load_file(folder / "model.safetensors")["stem.proj.weight"], frozen["stem.proj.weight"])


def test_early_stop_ends_the_run_keeps_the_best_and_a_rerun_trains_no_further(tmp_path, cut, upstream):
    common = ["--upstream", upstream, "--steps", 40, "--batch", 32, "--lr", 1e-9, "--warmup", 0, "--eval-every", 2,
              "--set", "early_stop=2", "--set", "val_fraction=0.1", "--set", 'method="bitfit"']
    out = run_cli(*args(tmp_path, cut, "stop", *common))
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "results" / "stop.json").read_text())
    # The zero head at a rate of 1e-9 scores every minival alike: the first is the best, two more tie it.
    assert record["early_stop"] == {"patience": 2, "best_step": 2, "best_minival": record["minival_accuracy"],
                                    "stopped_at": 6}
    assert record["weights"] == "best minival (step 2)" and "early stop at step 6" in out.stdout + out.stderr
    assert [e["step"] for e in record["history"]["loss"]][-1] <= 6
    before = (tmp_path / "stop" / "model" / "model.safetensors").read_bytes()
    again = run_cli(*args(tmp_path, cut, "stop", *common))
    assert again.returncode == 0 and "resuming" in again.stdout + again.stderr
    assert (tmp_path / "stop" / "model" / "model.safetensors").read_bytes() == before
    assert json.loads((tmp_path / "results" / "stop.json").read_text())["early_stop"]["stopped_at"] == 6


def test_an_exported_onnx_model_gives_torchs_logits_in_onnxruntime_for_any_batch(tmp_path, cli):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    model = randomize_(MlpMixer(TINY), seed=2).eval()
    classes = [f"class {i}" for i in range(10)]
    save_pretrained(model, tmp_path / "model", classes=classes)
    out = cli("export", tmp_path / "model", "--output", tmp_path / "deploy" / "mixer.onnx")
    assert out.returncode == 0, out.stderr
    meta = json.loads((tmp_path / "deploy" / "mixer.preprocess.json").read_text())
    assert meta["labels"] == classes and meta["mean"] == list(TINY.mean) and meta["std"] == list(TINY.std)
    assert meta["opset"] == next(o.version for o in onnx.load(tmp_path / "deploy" / "mixer.onnx").opset_import
                                 if o.domain in ("", "ai.onnx"))
    session = ort.InferenceSession(str(tmp_path / "deploy" / "mixer.onnx"))
    for n in (1, 5):
        x = torch.randn(n, 3, 32, 32)
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(["logits"], {"pixel_values": x.numpy()})[0]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("flags,says", [(["--format", "tflite"], "--format 'tflite': the formats are onnx"),
                                        (["--output", "model.bin"], "ends in .onnx")])
def test_an_export_asked_wrongly_is_one_error_line_and_writes_nothing(tmp_path, cli, flags, says):
    base = {"--output": str(tmp_path / "m.onnx"), "--format": "onnx"}
    base.update(dict(zip(flags[::2], flags[1::2])))
    out = cli("export", "S/32", *[x for kv in base.items() for x in kv])
    assert out.returncode == 2 and out.stderr.startswith("error:") and says in out.stderr, out.stderr
    assert not list(tmp_path.iterdir())
