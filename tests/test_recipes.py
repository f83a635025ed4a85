"""Every recipe loads and validates; the schedule is upstream's; bad keys are refused."""

import dataclasses
import json
import math
import re

import pytest

from conftest import REPO
from mixer_ft import ConfigError
from mixer_ft.train.optim import lr_factor
from mixer_ft.train.recipe import RESUMABLE_KEYS, Recipe, default, from_dict, load_recipe, parse_override, resume_conflicts

RECIPES = sorted((REPO / "recipes").rglob("*.toml"))  # recipes/transfer/ too


def test_the_recipe_set_covers_the_table():
    names = {p.stem for p in RECIPES}
    for up in ("in1k", "in21k"):
        for m in ("b16", "l16"):
            assert {f"{up}_{m}_cifar10", f"{up}_{m}_cifar100"} <= names
    assert {"scratch_cifar10", "smoke"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads_and_heads_with_its_command(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    head = path.read_text().splitlines()[0]
    rel = path.relative_to(REPO / "recipes").as_posix()
    assert re.fullmatch(rf"# mixer-ft (finetune|sweep) --recipe recipes/{rel}( --dataset \S+)?( --grid \S+)?( --set \S+)?",
                        head), head
    comments = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert "%" in comments or "No published" in comments  # the expected accuracy, where known


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem.startswith("in")], ids=lambda p: p.stem)
def test_table_recipes_follow_the_upstream_protocol(path):
    """vit_jax/configs/common.py: base_lr 0.03, warmup 500, batch 512, clip 1.0; DATASET_PRESETS: 10,000 steps and
    train[:98%] for CIFAR, 20,000 steps and train[:99%] (validation as test) for imagenet2012."""
    r = load_recipe(path)
    steps, held_out = (20_000, 0.01) if path.stem.endswith("imagenet") else (10_000, 0.02)
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay, r.warmup_steps, r.steps, r.global_batch,
            r.grad_clip, r.label_smoothing, r.crop_area_min, r.val_fraction) == (
        "sgd", 0.03, 0.9, 0.0, 500, steps, 512, 1.0, 0.0, 0.05, held_out)
    assert r.upstream in ("in1k", "in21k") and r.model in ("B/16", "L/16")


def test_defaults_are_the_upstream_protocol():
    r = Recipe()
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay, r.warmup_steps, r.steps, r.global_batch, r.grad_clip) == (
        "sgd", 0.03, 0.9, 0.0, 500, 10_000, 512, 1.0)


def test_schedule_is_linear_warmup_then_cosine_to_zero():
    assert lr_factor(1, 500, 10_000) == pytest.approx(1 / 500)
    assert lr_factor(250, 500, 10_000) == pytest.approx(0.5)
    assert lr_factor(500, 500, 10_000) == pytest.approx(1.0)
    mid = 500 + (10_000 - 500) // 2
    assert lr_factor(mid, 500, 10_000) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4750 / 9500)))
    assert lr_factor(10_000, 500, 10_000) == pytest.approx(0.0, abs=1e-12)


def test_unknown_keys_and_bad_values_are_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('upstream = "in21k"\nlearning_rate = 0.1\n')
    with pytest.raises(ConfigError, match="Unknown recipe \\(bad.toml\\) key 'learning_rate'"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="Did you mean 'global_batch'"):
        Recipe().replace(global_bach=128)
    with pytest.raises(ConfigError, match="must be int"):
        from_dict({"steps": "many"})
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        from_dict({"optimizer": "lamb"})
    with pytest.raises(ConfigError, match="unknown architecture field"):
        from_dict({"architecture": {"depth": 3}})
    with pytest.raises(ConfigError, match="leave model unset to fine-tune the architecture of the upstream weights"):
        from_dict({"model": "custom", "architecture": {"patch_size": 4, "hidden_dim": 8, "num_blocks": 1,
                                                      "tokens_mlp_dim": 4, "channels_mlp_dim": 8}})
    with pytest.raises(ConfigError, match="translate must be a non-negative whole number"):
        from_dict({"translate": -2})
    with pytest.raises(ConfigError, match="eval_translate must be a non-negative whole number"):
        from_dict({"eval_translate": -1})
    with pytest.raises(ConfigError, match="'eval_flip' must be bool"):
        from_dict({"eval_flip": "yes"})
    (tmp_path / "broken.toml").write_text("steps = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(tmp_path / "broken.toml")


def test_an_architecture_override_updates_the_recipes_table():
    r = load_recipe(REPO / "recipes" / "scratch_cifar10.toml", architecture={"hidden_dim": 64})
    assert r.architecture["hidden_dim"] == 64 and r.architecture["img_size"] == 32  # the rest is kept


def test_overrides_parse_as_toml_values():
    assert parse_override("lr=0.1") == ("lr", 0.1)
    assert parse_override('tracker="tensorboard"') == ("tracker", "tensorboard")
    assert parse_override("tracker=tensorboard") == ("tracker", "tensorboard")
    assert parse_override("architecture.hidden_dim=64") == ("architecture", {"hidden_dim": 64})
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lr")


@pytest.mark.parametrize("record", ["scratch_cifar10.json", "scratch_cifar10_2026-12-08.json"])
def test_the_committed_scratch_records_were_made_by_the_scratch_recipe(record):
    # The header's figures are the records', so the recipe may not drift from the runs behind them.
    run = json.loads((REPO / "results" / record).read_text())
    recorded = run["config"]
    recipe = load_recipe(REPO / "recipes" / "scratch_cifar10.toml").to_dict()
    # Given on the command line (where, not how); and the precision, "auto" now, which is bf16 on the recorded
    # runs' CPUs (both have native bf16, as "auto" requires): the earlier run's recipe said bf16 itself.
    where = {"dataset", "name", "output_dir", "results_dir", "mixed_precision"}
    assert recorded["mixed_precision"] in ("bf16", "auto") and run["mixed_precision"] == "bf16"
    assert load_recipe(REPO / "recipes" / "scratch_cifar10.toml").mixed_precision == "auto"
    # A key added since the run counts at its default, as when a checkpoint resumes.
    assert {k: recorded.get(k, default(k)) for k in recipe if k not in where} == \
        {k: v for k, v in recipe.items() if k not in where}


def test_a_new_optimisation_key_added_to_the_recipe_alone_makes_a_resume_refuse():
    # A key someone adds later, with no word about resuming: it must be checked by default.
    Later = dataclasses.make_dataclass("Later", [("ema_decay", float, dataclasses.field(default=0.0))],
                                       bases=(Recipe,), frozen=True)
    saved = Later().to_dict()
    assert resume_conflicts(saved, Later(ema_decay=0.0)) == []
    assert resume_conflicts(saved, Later(ema_decay=0.999)) == ["ema_decay"]
    # A checkpoint written before the key existed counts at its default.
    del saved["ema_decay"]
    assert resume_conflicts(saved, Later()) == [] and resume_conflicts(saved, Later(ema_decay=0.5)) == ["ema_decay"]


def test_only_the_listed_keys_may_change_on_resume():
    saved = Recipe().to_dict()
    free = {"output_dir": "elsewhere", "results_dir": "r", "name": "n", "tracker": "tensorboard", "log_every": 7,
            "eval_every": 3, "checkpoint_every": 9, "micro_batch": "auto", "mixed_precision": "no", "decode": "device",
            "fast_path": False, "compile": True, "eval_flip": True, "eval_translate": 1, "license": "mit",
            "max_data_loss": 0.5}
    assert set(free) == RESUMABLE_KEYS
    assert resume_conflicts(saved, Recipe(**free)) == []
    changed = {"lr": 0.1, "label_smoothing": 0.1, "image_column": "img", "architecture": {"gelu": "exact"},
               "crop_area_min": 0.5, "optimizer": "adamw", "epochs": 2.0, "new_head": True, "weight_decay": 0.1,
               "resize": "resample", "upstream": "w.npz"}
    assert sorted(resume_conflicts(saved, Recipe(**changed))) == sorted(changed)


def test_architecture_is_typed_by_mixer_config_and_resize_moved_to_the_top_level():
    old = {"upstream": "w.safetensors", "architecture": {"img_size": 48, "resize": "resample"}}
    recipe = from_dict(old)  # a recipe written before resize left the architecture table
    assert recipe.resize == "resample" and recipe.architecture == {"img_size": 48}
    assert resume_conflicts(old, recipe) == []  # so its checkpoints still resume
    assert resume_conflicts(old, recipe.replace(resize="tile")) == ["resize"]
    for bad, needle in [({"architecture": {"hidden_dim": 1.5}}, "architecture.hidden_dim must be int"),
                        ({"architecture": {"mean": [0.5, "x", 0.5]}}, "architecture.mean must be tuple"),
                        ({"architecture": {"depth": 2}}, "unknown architecture field"),
                        ({"epochs": True}, "'epochs' must be float | None"),
                        ({"micro_batch": 2.5}, "'micro_batch' must be int | str | None")]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            from_dict(bad)


def test_dry_run_prints_the_resolved_recipe_with_each_keys_source_and_the_hyper_rule(cifar_subset, tmp_path):
    import tomllib

    from conftest import run_cli

    cut = cifar_subset(train=100, test=20)  # 1,000 training images: the rule's 500 steps
    out = run_cli("finetune", "--dataset", cut, "--lr", "0.01", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0 and list(tmp_path.iterdir()) == []  # nothing built, nothing written
    resolved = tomllib.loads(out.stdout)
    assert resolved["steps"] == 500 and resolved["warmup_steps"] == 50 and resolved["lr"] == 0.01
    lines = {line.split(" = ")[0]: line for line in out.stdout.splitlines() if " = " in line}
    assert "# rule (BiT-HyperRule: 980 training images" in lines["steps"] and lines["lr"].endswith("# flag")
    assert lines["optimizer"].endswith("# default")
    assert from_dict({k: v for k, v in resolved.items()}) == Recipe(dataset=str(cut), lr=0.01, steps=500,
                                                                      warmup_steps=50)
    # A recipe's own schedule, or a flag's, is never replaced by the rule.
    kept = run_cli("finetune", "--recipe", REPO / "recipes" / "in21k_b16_cifar10.toml", "--dataset", cut, "--dry-run")
    assert tomllib.loads(kept.stdout)["steps"] == 10_000 and "# recipe file" in kept.stdout
    flagged = run_cli("finetune", "--dataset", cut, "--steps", "7", "--dry-run")
    assert tomllib.loads(flagged.stdout)["steps"] == 7
    # --steps beats a recipe's epochs (which train.py would otherwise prefer), and says so.
    epochs_recipe = tmp_path / "epochs.toml"
    epochs_recipe.write_text('epochs = 10\nglobal_batch = 64\n')
    resolved = tomllib.loads(run_cli("finetune", "--recipe", epochs_recipe, "--dataset", cut, "--steps", "7",
                                     "--dry-run").stdout)
    assert resolved["steps"] == 7 and "epochs" not in resolved
    by_epochs = run_cli("finetune", "--recipe", epochs_recipe, "--dataset", cut, "--dry-run").stdout
    assert "steps = 10000  # default (not used: epochs sets the length)" in by_epochs


def test_a_sweep_gets_the_hyper_rule_as_finetune_does(cifar_subset, tmp_path):
    from mixer_ft.train.resolve import resolve

    cut = cifar_subset(train=100, test=20)
    recipe = tmp_path / "r.toml"
    recipe.write_text('optimizer = "sgd"\nglobal_batch = 32\n')  # no steps, no epochs
    r, origin, said = resolve(str(recipe), {"dataset": str(cut)}, [])
    assert (r.steps, r.warmup_steps) == (500, 50) and origin["steps"].startswith("rule") and "BiT" in said
    r, _, said = resolve(str(recipe), {"dataset": str(cut)}, ["steps=20"])
    assert r.steps == 20 and said.startswith("warm-up 2:") and "BiT-HyperRule: " not in said  # no rule for steps
    r, _, said = resolve(str(recipe), {"dataset": str(cut), "warmup_steps": 50}, ["steps=20"])
    assert (r.steps, r.warmup_steps) == (20, 50) and said is None  # an explicit --warmup is kept
