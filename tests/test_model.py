"""The local Mixer: parameter counts, equality with timm, names, variants, config checks."""

import subprocess
import sys

import pytest
import torch

from conftest import randomize_
from mixer_ft import ConfigError, MixerConfig, MlpMixer, canonical_variant, create_model, num_params

# BRIEF §4, measured with timm (1000-class head).
PUBLISHED_PARAMS = {
    "S/32": 19_104_624, "S/16": 18_528_264, "B/32": 60_293_428, "B/16": 59_880_472,
    "L/32": 206_939_264, "L/16": 208_196_168, "H/14": 432_350_952,
}


@pytest.mark.parametrize("variant", list(PUBLISHED_PARAMS))
def test_parameter_counts_match_the_paper_variants(variant):
    with torch.device("meta"):
        model = MlpMixer(MixerConfig.from_variant(variant))
    assert num_params(model) == PUBLISHED_PARAMS[variant]


@pytest.mark.parametrize("variant,timm_name", [("S/32", "mixer_s32_224"), ("B/16", "mixer_b16_224")])
def test_equals_timm_on_the_same_random_weights(variant, timm_name):
    import timm

    ref = randomize_(timm.create_model(timm_name, pretrained=False), seed=1).eval()
    ours = create_model(variant, gelu="exact").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same names, no renaming
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert a.abs().max() > 0.1, "logits must be non-trivial for the comparison to mean anything"
    assert (a - b).abs().max().item() <= 1e-5


def test_gelu_flavour_changes_the_function_slightly():
    exact = randomize_(create_model("S/32", gelu="exact"), seed=3).eval()
    tanh = create_model("S/32", gelu="tanh").eval()
    tanh.load_state_dict(exact.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (exact(x) - tanh(x)).abs().max().item()
    assert 1e-7 < diff < 1e-2


@pytest.mark.parametrize("spelling", ["B/16", "B_16", "b16", "Mixer-B/16", "Mixer-B_16", "mixer_b16_224"])
def test_variant_spellings(spelling):
    assert canonical_variant(spelling) == "B/16"


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        create_model("X/16")
    for v in PUBLISHED_PARAMS:
        assert v in str(e.value)


def test_config_fields_and_overrides():
    model = create_model("S/32", num_classes=10, img_size=64, gelu="exact")
    assert (model.config.num_classes, model.config.img_size, model.config.num_tokens) == (10, 64, 4)
    assert model(torch.randn(3, 3, 64, 64)).shape == (3, 10)
    assert model.head.weight.abs().sum() == 0, "a new head starts at zero, as upstream"
    with pytest.raises(ConfigError, match="not a multiple of the patch size"):
        create_model("S/32", img_size=100)
    with pytest.raises(ConfigError, match="gelu must be one of"):
        create_model("S/32", gelu="relu")
    with pytest.raises(ConfigError, match="Unknown Mixer config field"):
        create_model("S/32", depth=3)
    assert MixerConfig.from_dict(model.config.to_dict()) == model.config


def test_state_dict_names_are_timms():
    names = set(create_model("S/32").state_dict())
    assert {"stem.proj.weight", "blocks.7.mlp_tokens.fc2.bias", "blocks.0.norm2.weight", "norm.bias",
            "head.weight"} <= names
    assert not any(n.split(".")[0].isdigit() for n in names)


def test_the_command_line_starts_without_torch_timm_or_datasets():
    # `mixer-ft --help` and the package import load none of them: torch alone takes seconds to import.
    heavy = "('torch', 'timm', 'datasets', 'huggingface_hub', 'accelerate')"
    code = f"import sys, mixer_ft, mixer_ft.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    code = f"import sys, runpy; sys.argv = ['mixer-ft', '--help']\ntry: runpy.run_module('mixer_ft', run_name='__main__')\n" \
           f"except SystemExit: pass\nprint(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "finetune" in out and out.strip().endswith("[]")
    # A name that needs torch still comes when asked for.
    code = "import mixer_ft, sys; mixer_ft.create_model; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_data_push_and_preflight_import_neither_the_weights_loader_nor_torch():
    code = ("import sys, mixer_ft.data.cache, mixer_ft.weights.push, mixer_ft.train.preflight, "
            "mixer_ft.weights.model_folder, mixer_ft.weights.sources; "
            "print(sorted(m for m in ('torch', 'mixer_ft.weights.loading', 'mixer_ft.weights.weight_file') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, caplog):
    import logging

    from mixer_ft.train import hardware
    from mixer_ft.train.devices import precision as _precision
    from mixer_ft.train.recipe import Recipe

    cpu = torch.device("cpu")
    assert _precision(Recipe(mixed_precision="auto"), cpu) == ("bf16" if hardware.cpu_native_bf16() else "no")
    assert hardware.hardware(cpu, 1)["device"].endswith(f", {hardware.cpu_isa()})")
    # A CPU with AVX2 only (the flags it reports), asked for bf16 explicitly: it runs, with the measured cost.
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma"})
    assert _precision(Recipe(mixed_precision="auto"), cpu) == "no" and hardware.cpu_isa() == "AVX2"
    with caplog.at_level(logging.WARNING):
        assert _precision(Recipe(mixed_precision="bf16"), cpu) == "bf16"
    assert "without native bf16 (AVX2)" in caplog.text and "slower than fp32" in caplog.text
