"""Fine-tuning methods beside the upstream protocol (recipe keys method, lora_*, layer_decay, class_weights, mixup,
cutmix, ema_decay, early_stop): each number against the library users come from (timm, peft's LoRA as the paper
writes it), and the model computed the same on both of its paths."""

import numpy as np
import pytest
import torch

from conftest import randomize_
from mixer_ft.model.lora import merge
from mixer_ft.model.mixer import MixerConfig, MlpMixer
from mixer_ft.train.averaging import EMA, Best, swapped
from mixer_ft.train.methods import apply_method, saved_model, trainable, trained
from mixer_ft.train.objective import Objective, balanced_weights
from mixer_ft.train.optim import make_optimizers
from mixer_ft.train.recipe import Recipe

CONFIG = MixerConfig(patch_size=8, hidden_dim=32, num_blocks=3, tokens_mlp_dim=24, channels_mlp_dim=64, img_size=32,
                     num_classes=5)


def lora_model(layers: str = "both", dropout: float = 0.0) -> MlpMixer:
    """A random tiny Mixer with LoRA on ``layers``, each update made non-zero (B starts at zero)."""
    torch.manual_seed(0)
    model = apply_method(randomize_(MlpMixer(CONFIG)), Recipe(method="lora", lora_rank=4, lora_layers=layers,
                                                              lora_dropout=dropout))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("layers", ["both", "tokens", "channels"])
def test_lora_changes_the_logits_alike_on_the_fast_and_the_textbook_path_and_merging_keeps_them(layers):
    model = lora_model(layers).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fast = model.set_fast_path(True)(x)
        plain = model.set_fast_path(False)(x)
        merged = saved_model(model)  # a copy: the model keeps its adapters
        assert merged is not model and model.blocks[0].mlp_channels.lora1 is not None or layers == "tokens"
        base = MlpMixer(CONFIG)
        base.load_state_dict({k: v for k, v in model.state_dict().items() if ".lora" not in k})
        without = base.eval()(x)
        after = merged.eval()(x)
    assert (fast - without).abs().max() > 1e-2, "the update changes the outputs"
    torch.testing.assert_close(fast, plain, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(after, plain, atol=2e-5, rtol=1e-5)
    assert not any(".lora" in k for k in merged.state_dict())  # a plain Mixer: timm's names only


def test_lora_is_peft_s_update_on_the_layer_it_adapts():
    """The textbook path's update is peft's LoraLayer's: base(x) + scale * B(A(dropout(x))), scale alpha / r."""
    peft = pytest.importorskip("peft")
    model = lora_model("channels")
    fc, ours = model.blocks[1].mlp_channels.fc1, model.blocks[1].mlp_channels.lora1
    wrapped = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(fc.in_features, fc.out_features)),
                                  peft.LoraConfig(r=4, lora_alpha=16, target_modules=["0"]))
    layer = wrapped.base_model.model[0]
    with torch.no_grad():
        layer.base_layer.weight.copy_(fc.weight)
        layer.base_layer.bias.copy_(fc.bias)
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(7, fc.in_features)
    torch.testing.assert_close(fc(x) + ours.rows(x), wrapped(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method,trains", [
    ("full", lambda n: True),
    ("lora", lambda n: ".lora" in n or n.startswith("head.")),
    ("bitfit", lambda n: n.endswith(".bias") or "norm" in n or n.startswith("head.")),
    ("head", lambda n: n.startswith("head.")),
])
def test_each_method_trains_what_it_names_the_head_always_and_the_optimizer_takes_only_that(method, trains):
    model = apply_method(MlpMixer(CONFIG), Recipe(method=method))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in model.named_parameters() if trains(n)}
    assert {"head.weight", "head.bias"} <= names
    optimized = {id(p) for o in make_optimizers(Recipe(method=method), model) for g in o.param_groups
                 for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    counted, every = trainable(model)
    assert counted == sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert every == sum(p.numel() for p in MlpMixer(CONFIG).parameters())  # the saved model's, adapters aside


def test_layer_decay_gives_each_parameter_timms_rate():
    from timm.models.mlp_mixer import MlpMixer as TimmMixer
    from timm.optim._param_groups import param_groups_layer_decay

    theirs = TimmMixer(num_classes=5, img_size=32, patch_size=8, num_blocks=3, embed_dim=32)
    names = {id(p): n for n, p in theirs.named_parameters()}
    timm_scale = {names[id(p)]: g["lr_scale"] for g in param_groups_layer_decay(theirs, layer_decay=0.7)
                  for p in g["params"]}
    ours = MlpMixer(CONFIG)
    recipe = Recipe(layer_decay=0.7, lr=0.1)
    names = {id(p): n for n, p in ours.named_parameters()}
    our_scale = {names[id(p)]: g["lr"] / recipe.lr for o in make_optimizers(recipe, ours) for g in o.param_groups
                 for p in g["params"]}
    assert our_scale.keys() == timm_scale.keys()
    for name, scale in timm_scale.items():
        assert our_scale[name] == pytest.approx(scale, rel=1e-12), name
    assert len(set(timm_scale.values())) == CONFIG.num_blocks + 2  # the stem, each block, the head: each its own


@pytest.mark.parametrize("mixup,cutmix,smoothing", [(0.8, 0.0, 0.0), (0.0, 1.0, 0.1), (0.8, 1.0, 0.1), (0.2, 0.3, 0.0)])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mixup_and_cutmix_mix_images_and_targets_as_timms_mixup_draw_for_draw(mixup, cutmix, smoothing, seed):
    from timm.data.mixup import Mixup

    x, y = torch.randn(6, 3, 32, 24), torch.tensor([0, 1, 2, 3, 4, 1])
    np.random.seed(seed)
    theirs_x, theirs_t = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=5)(
        x.clone(), y)
    ours = Objective(5, seed=0, label_smoothing=smoothing, mixup=mixup, cutmix=cutmix)
    ours_x, ours_t = ours.mix(x, y, np.random.RandomState(seed))
    torch.testing.assert_close(ours_x, theirs_x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_t, theirs_t, atol=1e-7, rtol=0)


def test_mixing_is_fixed_by_seed_step_and_micro_batch_and_without_it_the_loss_is_the_protocols():
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixing = Objective(4, seed=3, mixup=0.8, cutmix=1.0)
    a, b = mixing.inputs(x, y, step=7, part=1), mixing.inputs(x, y, step=7, part=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(mixing.inputs(x, y, step=8, part=1)[0], a[0])
    plain = Objective(4, seed=3, label_smoothing=0.1)
    assert plain.inputs(x, y, 7, 1)[0] is x
    logits = torch.randn(4, 4)
    assert plain.loss(logits, y) == torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)


def test_balanced_class_weights_give_each_class_the_same_total_weight():
    counts = [90, 9, 1, 0]
    w = balanced_weights(counts)
    totals = [wi * c for wi, c in zip(w, counts) if c]
    assert totals == pytest.approx([sum(counts) / len(counts)] * 3)  # scikit-learn's n / classes each
    logits, y = torch.randn(5, 4), torch.tensor([0, 0, 1, 2, 0])
    weighted = Objective(4, seed=0, weights=w).loss(logits, y)
    per = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    expected = (per * torch.tensor(w)[y]).sum() / torch.tensor(w)[y].sum()
    torch.testing.assert_close(weighted, expected)


def test_the_moving_average_is_timms_model_ema_and_is_what_is_scored_while_swapped_in():
    from timm.utils import ModelEmaV3

    model = randomize_(MlpMixer(CONFIG))
    theirs, ours = ModelEmaV3(model, decay=0.9), EMA(model, 0.9)
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        theirs.update(model)
        ours.update()
    for name, value in ours.tensors().items():
        torch.testing.assert_close(value, theirs.module.state_dict()[name], atol=1e-6, rtol=1e-6)
    x = torch.randn(2, 3, 32, 32)
    before = model.state_dict()["head.weight"].clone()
    with torch.no_grad(), swapped(model, ours.tensors()):
        torch.testing.assert_close(model.eval()(x), theirs.module.eval()(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(model.state_dict()["head.weight"], before), "the training weights are back"


def test_early_stopping_keeps_the_first_best_and_stops_after_patience_evaluations_without_a_better_one():
    best, w = Best(patience=2), {"head.weight": torch.zeros(2)}
    stops = [best.update(step, acc, {"head.weight": torch.full((2,), float(step))})
             for step, acc in ((1, 0.5), (2, 0.6), (3, 0.6), (4, 0.55), (5, 0.7))]
    assert stops == [False, False, False, True, True] and best.step == 2 and best.stopped_at == 4
    assert torch.equal(best.weights["head.weight"], torch.full((2,), 2.0)) and w["head.weight"].sum() == 0
    again = Best(2)
    again.load_state_dict(best.state_dict())
    assert again.said() == best.said() == {"patience": 2, "best_step": 2, "best_minival": 0.6, "stopped_at": 4}


def test_merging_is_in_place_and_removes_every_adapter():
    model = lora_model()
    trained_before = trained(model)
    assert any(".lora" in n for n in trained_before)
    merge(model)
    assert not any(".lora" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("key,value,says", [
    ("method", '"prefix"', "method must be one of"), ("lora_rank", "0", "lora_rank must be at least 1"),
    ("lora_layers", '"all"', "lora_layers must be one of"), ("layer_decay", "1.5", "layer_decay must be in (0, 1]"),
    ("class_weights", '"inverse"', "class_weights must be"), ("class_weights", "[1, -2]", "positive numbers"),
    ("class_weights", '[1, "a"]', "positive numbers"),
    ("mixup", "-1", "mixup must be a finite number"), ("ema_decay", "1.0", "ema_decay must be in [0, 1)"),
    ("early_stop", "-1", "early_stop must be"),
])
def test_a_wrong_method_key_is_one_error_line(cli, key, value, says):
    out = cli("finetune", "--dry-run", "--set", f"{key}={value}")
    assert out.returncode == 2 and out.stderr.startswith("error:") and says in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_early_stop_without_minival_evaluations_is_refused_before_anything_runs(cli):
    out = cli("finetune", "--dry-run", "--set", "early_stop=3", "--eval-every", "0")
    assert out.returncode == 2 and "early_stop counts minival evaluations" in out.stderr


@pytest.mark.parametrize("method", ["lora", "head"])
def test_the_dry_run_prints_the_share_of_the_model_that_trains(cli, method):
    out = cli("finetune", "--dry-run", "--model", "B/16", "--set", f'method="{method}"')
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    model = apply_method(MlpMixer(MixerConfig.from_variant("B/16", num_classes=1)), Recipe(method=method))
    train, every = trainable(model)
    assert line.startswith(f"# trainable parameters ({method}): {train - 769:,} of the backbone's {every - 769:,}")
