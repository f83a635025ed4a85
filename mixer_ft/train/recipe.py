"""Fine-tune recipes: plain data (TOML), validated, with the upstream protocol as defaults.

A recipe names the weights, the model and the data set, and the schedule. Its defaults are
vit_jax's "default adaption parameters" (README, Fine-tuning): plain SGD with momentum 0.9, lr 0.03, 500
linear warm-up steps then cosine to 0 over 10,000 steps, global batch 512, global-norm clip 1.0,
no weight decay, zero-initialised head, cross-entropy without smoothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixer_ft.atomic import json_text
from mixer_ft.bounded import read_text
from mixer_ft.errors import ConfigError
from mixer_ft.gate import no_such
from mixer_ft.model.config import AREA_RANGE, GELU_FLAVOURS, RESIZE_METHODS, TEST_FRACTION, WEIGHT_SUFFIXES, MixerConfig
from mixer_ft.publish import public_text
from mixer_ft.train.methods import LORA_LAYERS, METHODS
from mixer_ft.train.optim import OPTIMIZERS

PRECISIONS = ("auto", "no", "bf16", "fp16")
MOMENTUM_DTYPES = ("float32", "bfloat16")
LR_SCALINGS = ("linear", "sqrt", "none")
CLASS_WEIGHTS = ("balanced",)  # or a list of one weight a class (train/objective.py)
DECODE_PLACES = ("host", "device")  # where a batch's encoded images are decoded (mixer_ft.data.device_decode)
# torch.compile's modes: "reduce-overhead" launches the step's kernels as CUDA graphs (none on a CPU).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# The `architecture` sub-table: MixerConfig's fields (the head's size comes from the data set).
_ARCH_TYPES = {k: t for k, t in typing.get_type_hints(MixerConfig).items() if k != "num_classes"}
# Keys a run may change when it resumes: where it writes, what it logs, how a step is computed
# (micro-batch, precision, fast path) and how it is scored. Every other key defines the
# optimisation, so a checkpoint resumes only under the same value: a key added to Recipe is
# checked on resume unless it is named here.
RESUMABLE_KEYS = frozenset({"output_dir", "results_dir", "name", "tracker", "log_every", "eval_every",
                            "checkpoint_every", "micro_batch", "mixed_precision", "decode", "fast_path", "compile",
                            "eval_flip", "eval_translate", "license", "max_data_loss"})


@dataclass(frozen=True)
class Recipe:
    """Everything a fine-tune run needs; a run record stores it whole."""

    upstream: str = "in21k"  # in1k | in21k | none | any weight source (file, URL, hf-hub:, timm:)
    model: str | None = None  # a variant; "custom" with the sizes in `architecture`; None: see `variant`
    dataset: str = "cifar10"
    streaming: bool = False  # read the set shard by shard as it trains, no cache (shards, hf:); a shard URL always is
    architecture: dict[str, Any] = field(default_factory=dict)  # MixerConfig fields to set
    resize: str | None = None  # how pretrained weights reach another architecture.img_size: tile | resample
    new_head: bool | None = None  # a new zero head (True) or the checkpoint's (False); None: see train.build.head_choice
    image_column: str | None = None
    label_column: str | None = None
    val_fraction: float = 0.02
    test_fraction: float = TEST_FRACTION  # of a folder without split folders: each class's share held out as test
    max_data_loss: float = 0.05  # the share of the data's samples that may be lost (cut-short shards, undecodable
    # images, bad labels) before the run stops, naming them (data/loss.py)
    steps: int = 10_000
    epochs: float | None = None  # instead of steps: passes over train[:98%]
    global_batch: int = 512
    lr_scaling: str = "linear"  # how lr follows a global batch cut to a small set's size (train/resolve.fit_batch)
    micro_batch: int | str | None = None  # per process and forward pass; None = no accumulation; "auto"
    optimizer: str = "sgd"
    lr: float = 0.03
    momentum: float = 0.9  # SGD's, and Muon's
    momentum_dtype: str = "float32"  # SGD's momentum buffer: float32, or bfloat16 as vit_jax's train.py keeps it
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    # What trains, and how (docs/finetune.md, "Methods"); each is off by default, which is the upstream protocol.
    method: str = "full"  # full | lora | bitfit | head (train/methods.py)
    lora_rank: int = 8  # method = "lora": the update's rank, its alpha (scale alpha / rank), dropout on its input,
    lora_alpha: float = 16.0  # and which MLPs get one: "tokens", "channels" or "both"
    lora_dropout: float = 0.0
    lora_layers: str = "both"
    layer_decay: float = 1.0  # lr of the layer k below the head: lr * layer_decay**k (BEiT's, timm's); 1: none
    class_weights: str | list[float] | None = None  # "balanced" (n / (classes * n_c)) or one weight per class
    mixup: float = 0.0  # timm's mixup_alpha and cutmix_alpha: 0 is off; both set: each micro-batch one or the other
    cutmix: float = 0.0
    ema_decay: float = 0.0  # evaluate and save the moving average of the weights (e.g. 0.9998); 0: off
    early_stop: int = 0  # stop after this many minival evaluations without a better one, keeping the best; 0: off
    crop_area_min: float = AREA_RANGE[0]  # Inception crop: smallest share of the image kept
    translate: int = 0  # random shift of the crop box, up to this many source pixels each way (edges repeat)
    eval_flip: bool = False  # evaluate on the mean logits of each image and its mirror image
    eval_translate: int = 0  # also on copies shifted this many pixels diagonally each way (edges repeat)
    mixed_precision: str = "auto"  # auto = bf16 where the device has it, else fp32
    decode: str = "host"  # where the compact store's JPEGs are decoded: "host" (PIL, threads) or "device" (nvJPEG on a GPU)
    fast_path: bool = True  # token-major layout, fused optimizer; plus torch.compile on CUDA
    compile: bool | str | None = None  # torch.compile (inductor) on any device: true, false or a mode (COMPILE_MODES);
    # None: the default mode with the fast path on CUDA
    eval_every: int = 1000  # minival accuracy every N steps (0: only at the end)
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    output_dir: str | None = None  # default runs/<name>
    results_dir: str = "results"
    tracker: str | None = None  # "tensorboard" (or any Accelerate tracker name)
    license: str = "apache-2.0"  # of the fine-tuned model, on its card (Google's Mixer weights are Apache-2.0)
    name: str | None = None  # default: <upstream>_<model>_<dataset>

    def __post_init__(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"Recipe: {msg}")

        for key in ("output_dir", "results_dir"):  # "~/runs" is the home folder's, never a folder named "~"
            value = getattr(self, key)
            if isinstance(value, str) and value.startswith("~"):
                home = os.path.expanduser(value)
                check(not home.startswith("~"), f"{key} {value!r}: {value.split('/')[0]} names no home folder here.")
                object.__setattr__(self, key, home)

        if "resize" in self.architecture:  # recipes before 0.2 kept resize inside architecture
            arch = dict(self.architecture)
            moved = arch.pop("resize")
            check(self.resize in (None, moved), f"resize is set twice: {self.resize!r} and architecture.resize "
                  f"{moved!r}; keep the top-level key.")
            object.__setattr__(self, "architecture", arch)
            object.__setattr__(self, "resize", moved)

        check(self.steps >= 1, f"steps must be at least 1, got {self.steps}.")
        check(self.epochs is None or self.epochs > 0, f"epochs must be positive, got {self.epochs}.")
        check(self.global_batch >= 1, f"global_batch must be at least 1, got {self.global_batch}.")
        check(self.micro_batch in (None, "auto") or (isinstance(self.micro_batch, int) and self.micro_batch >= 1),
              f"micro_batch must be a positive integer or \"auto\", got {self.micro_batch!r}.")
        check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}.")
        check(self.momentum_dtype in MOMENTUM_DTYPES, f"momentum_dtype must be one of {MOMENTUM_DTYPES}, got "
              f"{self.momentum_dtype!r}.")
        check(self.momentum_dtype == "float32" or self.optimizer == "sgd",
              "momentum_dtype = \"bfloat16\" is for optimizer = \"sgd\" (vit_jax's momentum buffer).")
        check(not isinstance(self.compile, str) or self.compile in COMPILE_MODES,
              f"compile must be true, false or one of {COMPILE_MODES}, got {self.compile!r}.")
        check(self.lr_scaling in LR_SCALINGS, f"lr_scaling must be one of {LR_SCALINGS}, got {self.lr_scaling!r}.")
        check(self.decode in DECODE_PLACES, f"decode must be one of {DECODE_PLACES}, got {self.decode!r}.")
        check(self.mixed_precision in PRECISIONS,
              f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}.")
        check(self.lr > 0 and self.warmup_steps >= 0 and self.grad_clip >= 0 and self.weight_decay >= 0,
              "lr must be positive; warmup_steps, grad_clip and weight_decay non-negative.")
        check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        self._check_method(check)
        check(0 < self.crop_area_min <= 1, f"crop_area_min must be in (0, 1], got {self.crop_area_min}.")
        for key in ("translate", "eval_translate"):
            pixels = getattr(self, key)
            check(pixels >= 0, f"{key} must be a non-negative whole number of pixels, got {pixels!r}.")
        check(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}.")
        check(0 < self.test_fraction < 1, f"test_fraction must be in (0, 1), got {self.test_fraction}.")
        check(0 <= self.max_data_loss <= 1, f"max_data_loss must be in [0, 1] (a share of the samples), got "
              f"{self.max_data_loss}.")
        check(min(self.eval_every, self.checkpoint_every) >= 0 and self.log_every >= 1,
              "eval_every and checkpoint_every must be >= 0, log_every >= 1.")
        check(0 <= self.seed < 2**32, f"seed must be a whole number from 0 to 2**32 - 1, got {self.seed}.")
        for key in ("lr", "momentum", "weight_decay", "grad_clip", "label_smoothing", "epochs", "val_fraction",
                    "test_fraction", "crop_area_min", "max_data_loss"):
            value = getattr(self, key)
            check(value is None or math.isfinite(value), f"{key} must be a finite number, got {value}.")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}.")
        check(self.name is None or (self.name == safe_name(self.name) and len(self.name) <= 120),
              f"name {self.name!r} is used as a file and folder name: letters, digits, '.', '_', '+' and '-' "
              f"only, not starting with '.' or '-', at most 120 characters (e.g. {safe_name(self.name or '')!r}).")
        unknown = set(self.architecture) - set(_ARCH_TYPES)
        check(not unknown, f"unknown architecture field(s) {sorted(unknown)}; valid: {sorted(_ARCH_TYPES)}.")
        for key, value in self.architecture.items():
            check(_type_ok(value, _ARCH_TYPES[key]), f"architecture.{key} must be {_type_name(_ARCH_TYPES[key])}, "
                  f"got {value!r}.")
        check(self.architecture.get("gelu", "tanh") in GELU_FLAVOURS, f"gelu must be one of {GELU_FLAVOURS}.")
        check(self.resize is None or self.resize in RESIZE_METHODS, f"resize must be one of {RESIZE_METHODS}.")
        check(self.resize is None or self.upstream != "none", "resize says how pretrained weights reach another "
              "img_size; with upstream = \"none\" there are none: leave it out.")
        if self.model == "custom":
            need = {"patch_size", "hidden_dim", "num_blocks", "tokens_mlp_dim", "channels_mlp_dim"}
            check(need <= set(self.architecture), f"model = \"custom\" needs architecture.{{{', '.join(sorted(need))}}}.")
            check(self.upstream == "none", "model = \"custom\" trains the architecture in `architecture` from scratch: "
                  "set upstream = \"none\", or leave model unset to fine-tune the architecture of the upstream weights.")

    def _check_method(self, check: Any) -> None:
        """The keys of what trains and how (``method`` and on)."""
        check(self.method in METHODS, f"method must be one of {tuple(METHODS)}, got {self.method!r}.")
        check(self.lora_rank >= 1 and self.lora_alpha > 0 and 0 <= self.lora_dropout < 1,
              "lora_rank must be at least 1, lora_alpha positive and lora_dropout in [0, 1).")
        check(self.lora_layers in LORA_LAYERS, f"lora_layers must be one of {LORA_LAYERS}, got {self.lora_layers!r}.")
        check(0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1] (1: none), got {self.layer_decay}.")
        check(self.layer_decay == 1 or self.optimizer != "muon", "layer_decay is for optimizer sgd or adamw; muon "
              "sizes each matrix's step itself.")
        weights = self.class_weights
        if isinstance(weights, (list, tuple)):
            check(all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0
                      for w in weights), f"class_weights must be positive numbers, one a "
                  f"class in the data set's order, got {weights}.")
            object.__setattr__(self, "class_weights", [float(w) for w in weights])
        else:
            check(weights in (None, *CLASS_WEIGHTS), f"class_weights must be \"balanced\" or a list of one weight "
                  f"a class, got {weights!r}.")
        for key in ("mixup", "cutmix", "lora_alpha", "lora_dropout", "layer_decay", "ema_decay"):
            check(math.isfinite(getattr(self, key)) and getattr(self, key) >= 0,
                  f"{key} must be a finite number, at least 0, got {getattr(self, key)}.")
        check(self.ema_decay < 1, f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}.")
        check(self.early_stop >= 0, f"early_stop must be a number of minival evaluations, at least 0 (0: off), got "
              f"{self.early_stop}.")
        check(not self.early_stop or (self.eval_every and self.val_fraction), "early_stop counts minival evaluations: "
              "it needs eval_every above 0 and val_fraction above 0.")

    @property
    def variant(self) -> str | None:
        """The variant to build: ``model``; unset, B/16 for in1k, in21k and none, and None (the
        architecture the upstream weights hold) for a weight file or folder."""
        if self.model is not None:
            return self.model
        return "B/16" if self.upstream in ("in1k", "in21k", "none") else None

    @property
    def run_name(self) -> str:
        """``name``, else the run folder's name (``output_dir``), else <upstream>_<model>_<data set>: a file
        and folder name, never a path."""
        if self.name:
            return self.name
        if self.output_dir and Path(self.output_dir).name not in ("", ".", ".."):
            return safe_name(Path(self.output_dir).name)
        data = Path(public_text(self.dataset).removeprefix("hf:")).name.split(".")[0]  # a URL: never its query
        if self.upstream in ("in1k", "in21k", "none"):
            return safe_name(f"{self.upstream}_{(self.variant or '').replace('/', '').lower()}_{data}")
        # Weights of one's own: named by their file or folder (a run's model/ by its run), e.g. smoke_cifar10_photos.
        weights = Path(self.upstream.split(":", 1)[-1].rstrip("/"))
        up = weights.parent.name if weights.name == "model" else (
            weights.stem if weights.suffix.lower() in WEIGHT_SUFFIXES else weights.name)
        model = f"_{self.variant.replace('/', '').lower()}" if self.model else ""
        return safe_name(f"{up}{model}_{data}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Recipe:
        check_keys(changes, "override")
        return dataclasses.replace(self, **changes)


def safe_name(text: str) -> str:
    """``text`` as a plain file name: runs of other characters become '-', no leading '.' or '-', at most 120
    characters. A longer one keeps its start and ends with a digest of the whole, so two long names that
    differ only past the cut stay two names."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip(".-") or "run"
    if len(name) <= 120:
        return name
    import hashlib

    return name[:111].rstrip(".-") + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a plain (TOML) value fits a type hint: int, float, str, bool, dict, tuple, unions of them."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    origin = typing.get_origin(hint) or hint
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if isinstance(value, bool):  # a bool is an int to Python, never to a recipe
        return origin is bool
    if origin is float:
        return isinstance(value, (int, float))
    if origin is tuple:  # tuple[float, ...]: TOML gives a list
        item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    return isinstance(value, origin)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _migrated(saved: dict[str, Any]) -> dict[str, Any]:
    """A recipe dict of an older checkpoint or record in today's keys (resize left architecture in 0.2)."""
    arch = saved.get("architecture")
    if isinstance(arch, dict) and "resize" in arch:
        saved = dict(saved, architecture={k: v for k, v in arch.items() if k != "resize"}, resize=arch["resize"])
    return saved


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def default(key: str) -> Any:
    """The default value of recipe key ``key`` (the one place defaults are written)."""
    return _field_default(next(f for f in dataclasses.fields(Recipe) if f.name == key))


def _same(key: str, saved: Any, now: Any) -> bool:
    """Whether a checkpoint's recipe value is the run's; a local data set may be named by another path."""
    if saved == now:
        return True
    # The same folder or archive named relative to another working directory, or through a link.
    return key == "dataset" and Path(saved).exists() and Path(now).exists() and Path(saved).samefile(now)


def _differences(saved: dict[str, Any], recipe: Recipe, free: frozenset[str]) -> list[str]:
    """Keys outside ``free`` whose value in ``saved`` differs from ``recipe``'s; a key ``saved`` lacks
    (it was written before the key existed) counts at its default."""
    saved = _migrated(saved)
    return [f.name for f in dataclasses.fields(recipe) if f.name not in free
            and not _same(f.name, saved.get(f.name, _field_default(f)), getattr(recipe, f.name))]


def resume_conflicts(saved: dict[str, Any], recipe: Recipe) -> list[str]:
    """The keys outside :data:`RESUMABLE_KEYS` whose value in a checkpoint's recipe differs from ``recipe``'s."""
    return _differences(saved, recipe, RESUMABLE_KEYS)


def protocol_differences(config: dict[str, Any], recipe: Recipe) -> list[str]:
    """How a run's recipe (a record's ``config``) departs from ``recipe``'s protocol: the keys that
    define the optimisation, whatever the data set's path, the seed, the folders or the name."""
    return _differences(config, recipe, RESUMABLE_KEYS | {"dataset", "seed"})


def _recipe_bases() -> tuple[Path, Path]:
    """Where recipes/ is looked for: the working folder, then the checkout the package sits in."""
    return Path.cwd(), Path(__file__).resolve().parents[2]


def shipped_recipes() -> list[str]:
    """The recipes beside the package (a checkout's recipes/, or the working folder's), as paths to give."""
    for base in _recipe_bases():
        found = sorted(str(p.relative_to(base)) for p in (base / "recipes").rglob("*.toml"))
        if found:
            return found
    return []


def find_recipe(relative: str) -> Path:
    """A shipped recipe (``recipes/...``), looked up from the working folder, then beside the package."""
    for base in _recipe_bases():
        if (base / relative).is_file():
            return base / relative
    raise ConfigError(f"Recipe {relative} not found here or beside the package; run from a mixer_ft checkout.")


def check_keys(d: dict[str, Any], what: str) -> None:
    valid = [f.name for f in dataclasses.fields(Recipe)]
    for key in d:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Valid keys: {', '.join(valid)}."
            raise ConfigError(f"Unknown {what} key {key!r}.{hint}")


def load_recipe(path: str | Path, **overrides: Any) -> Recipe:
    """Read a TOML recipe; ``overrides`` (e.g. from the command line) win over its values."""
    path = Path(path)
    try:
        data = tomllib.loads(read_text(path, "recipe"))
    except FileNotFoundError:
        raise ConfigError(f"{no_such(str(path), 'recipe')} The recipes: {', '.join(shipped_recipes()) or 'none found'}.") \
            from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Recipe {path} is not valid TOML: {e}.") from None
    except OSError as e:
        raise ConfigError(f"Cannot read recipe {path}: {e.strerror or e}.") from None
    check_keys(data, f"recipe ({path.name})")
    merged = data | overrides
    for key, value in overrides.items():  # a table (architecture) is updated, not replaced
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            merged[key] = data[key] | value
    try:
        return from_dict(merged)
    except ConfigError as e:
        raise ConfigError(f"{e} (recipe {path}{' with the flags given' if overrides else ''})") from None


def from_dict(data: dict[str, Any]) -> Recipe:
    """A recipe from plain values, unknown keys and wrong types refused with a clear message."""
    check_keys(data, "recipe")
    hints = typing.get_type_hints(Recipe)
    for key, value in data.items():
        if value is not None and not _type_ok(value, hints[key]):
            raise ConfigError(f"Recipe key {key!r} must be {_type_name(hints[key])}, got {value!r}.")
    return Recipe(**data)


def to_toml(recipe: Recipe, origin: dict[str, str]) -> str:
    """The resolved recipe as TOML, every key, each with where its value came from."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json_text(str(v))
    lines, table = [], []
    for key, v in recipe.to_dict().items():
        if isinstance(v, dict):
            table = [f"[{key}]  # {origin.get(key, 'default')}"] + [f"{k} = {value(x)}" for k, x in v.items()]
        elif v is None:
            lines.append(f"# {key} unset  # {origin.get(key, 'default')}")
        else:
            unused = " (not used: epochs sets the length)" if key == "steps" and recipe.epochs else ""
            lines.append(f"{key} = {value(v)}  # {origin.get(key, 'default')}{unused}")
    return "\n".join(lines + ([""] + table if table else [])) + "\n"


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``: the value is read as TOML (numbers, strings, booleans)."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"--set takes key=value, got {text!r}.")
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: a string
    if "." in key:  # architecture.hidden_dim=128
        head, sub = key.split(".", 1)
        return head, {sub: value}
    return key, value
