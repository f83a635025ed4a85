"""Fine-tuning methods side by side (docs/methods.md): full fine-tuning, LoRA at two ranks, BitFit, the head
alone, and full fine-tuning with EMA and with mixup/cutmix, on the transfer experiment's setting.

    python benchmarks/transfer/make_data.py                # the animal and vehicle image folders (once)
    python benchmarks/methods.py                           # the runs: records in results/methods/
    python benchmarks/methods.py --cost                    # memory and step time: results/methods/cost_cpu.json
    python benchmarks/methods_report.py                    # the table and figure of docs/methods.md

The runs: the animal upstream (recipes/transfer/upstream_animals.toml, trained here first unless its model is
in runs/ already), fine-tuned on the four vehicle classes with 100 and 1,000 images a class by the transfer
experiment's recipe (recipes/transfer/finetune_vehicles.toml: 500 steps, batch 32), each method with the lr
its own `mixer-ft sweep` chose on seed 0's minival, then seeds 1 and 2 at that lr. A step whose record is
there already is skipped, so an interrupted run goes on where it stopped.

The cost: one bare training step (forward, backward, update; float32, no accumulation) of each method, in a
process of its own, on the transfer model at 32 px and on B/16 at 224 px: the weights' bytes plus the process's
peak resident memory above what it held before the first step (grads, optimizer state, activations; on a GPU:
the peak the allocator reached), and the median time of the steps after the first. ``--set key=value``
(repeatable) goes to every training command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "transfer"))
from run import mixer_ft  # noqa: E402 - the transfer experiment's command runner: printed, stopped on failure

SIZES = (100, 1000)
SEEDS = (0, 1, 2)
RECIPE = "recipes/transfer/finetune_vehicles.toml"
UPSTREAM_RECIPE, UPSTREAM_RUN = "recipes/transfer/upstream_animals.toml", "transfer_upstream_animals"
# method arm: (recipe keys, the lr grid its sweep tries). Frozen weights take larger steps: each grid is
# three points around where its method trains, the full arms' the top of the paper's (0.001 never won here).
ARMS = {
    "full": ([], "0.003,0.01,0.03"),
    "lora4": (['method="lora"', "lora_rank=4", "lora_alpha=8"], "0.03,0.1,0.3"),
    "lora16": (['method="lora"', "lora_rank=16", "lora_alpha=32"], "0.03,0.1,0.3"),
    "bitfit": (['method="bitfit"'], "0.03,0.1,0.3"),
    "head": (['method="head"'], "0.1,0.3,1.0"),
    "full_ema": (["ema_decay=0.99"], "0.003,0.01,0.03"),  # 0.99: a half-life of 69 of the 500 steps
    "full_mix": (["mixup=0.8", "cutmix=1.0"], "0.003,0.01,0.03"),  # timm's (DeiT's) alphas
}
# glibc keeps freed memory of a size under its (moving) mmap threshold for reuse, so a process's resident peak says
# little of what it held at once; with every block over 64 KiB mapped and unmapped, it follows the live tensors.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
# The cost's models: the transfer experiment's (its upstream recipe's architecture) and B/16 at 224 px.
COST_MODELS = {"transfer_32px": ({"patch_size": 4, "hidden_dim": 128, "num_blocks": 6, "tokens_mlp_dim": 64,
                                  "channels_mlp_dim": 512, "img_size": 32, "gelu": "exact"}, 32),
               "B16_224px": ("B/16", 8), "B16_224px_mb2": ("B/16", 2)}


def runs(args: argparse.Namespace) -> None:
    """Every method's sweep and seeds, at each size."""
    results, data = Path(args.results), Path(args.data)
    if not (data / "upstream").is_dir():
        sys.exit(f"error: no data in {data}; run benchmarks/transfer/make_data.py first (from the repository root).")
    common = [f"--set=results_dir={json.dumps(str(results))}"] + [f"--set={s}" for s in args.sets]
    upstream = Path("runs") / UPSTREAM_RUN / "model"
    if not (upstream / "model.safetensors").exists():
        mixer_ft("finetune", "--recipe", UPSTREAM_RECIPE, f"--dataset={data / 'upstream'}", *common)
    common.append(f"--set=upstream={json.dumps(str(upstream))}")
    skipped = 0
    for n in [int(v) for v in args.sizes.split(",")]:
        for arm in args.arms.split(","):
            keys, grid = ARMS[arm]
            keys = [f"--set={k}" for k in keys]
            sweep = results / f"sweep_methods_{arm}_n{n}_s0.json"
            if sweep.exists():
                skipped += 1
            else:
                mixer_ft("sweep", "--recipe", RECIPE, f"--dataset={data / f'downstream_n{n}_s0'}",
                         f"--grid=lr={grid}", f"--set=name=methods_{arm}_n{n}_s0", "--set=seed=0", *keys, *common)
            lr = json.loads(sweep.read_text())["chosen"]["lr"]
            for s in SEEDS[1:]:
                if (results / f"methods_{arm}_n{n}_s{s}.json").exists():
                    skipped += 1
                    continue
                mixer_ft("finetune", "--recipe", RECIPE, f"--dataset={data / f'downstream_n{n}_s{s}'}", f"--lr={lr}",
                         f"--set=name=methods_{arm}_n{n}_s{s}", f"--set=seed={s}", *keys, *common)
    if skipped:
        print(f"skipped {skipped} step(s) whose records are in {results} already", file=sys.stderr)


def one_cost(arm: str, model_name: str, steps: int = 5) -> dict:
    """One method's bare training steps on one model, in this process: peak memory the steps add, step time."""
    import torch

    from mixer_ft.model.config import MixerConfig
    from mixer_ft.model.mixer import MlpMixer
    from mixer_ft.train.methods import apply_method, trainable
    from mixer_ft.train.objective import Objective
    from mixer_ft.train.optim import make_optimizers
    from mixer_ft.train.recipe import from_dict

    arch, batch = COST_MODELS[model_name]
    config = MixerConfig.from_variant(arch, num_classes=4) if isinstance(arch, str) else \
        MixerConfig(**arch, num_classes=4)
    recipe = from_dict({"lr": 0.01, **{k: json.loads(v) for k, v in (key.split("=", 1) for key in ARMS[arm][0])}})
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = apply_method(MlpMixer(config), recipe).to(device)
    optimizers = make_optimizers(recipe, model)
    objective = Objective(4, seed=0, mixup=recipe.mixup, cutmix=recipe.cutmix)
    x = torch.randn(batch, 3, config.img_size, config.img_size, device=device)
    y = torch.randint(0, 4, (batch,), device=device)
    before = torch.cuda.memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ema = None
    if recipe.ema_decay:  # its copy of the weights counts among what training holds
        from mixer_ft.train.averaging import EMA

        ema = EMA(model, recipe.ema_decay)
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        inputs, targets = objective.inputs(x, y, step, 0)
        objective.loss(model(inputs), targets).backward()
        for o in optimizers:
            o.step()
            o.zero_grad(set_to_none=True)
        if ema:
            ema.update()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    train, every = trainable(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"arm": arm, "model": model_name, "micro_batch": batch, "device": str(device), "trained_params": train,
            "model_params": every, "trained_share": round(train / every, 5), "weights_bytes": weights,
            "steps_peak_bytes": peak - before, "peak_bytes": weights + peak - before,
            "step_s": round(statistics.median(times[1:]), 4)}


def cost(args: argparse.Namespace) -> None:
    """:func:`one_cost` of every arm and model, each in a process of its own (a peak is the process's)."""
    rows = []
    for model_name in COST_MODELS:
        for arm in args.arms.split(","):
            out = subprocess.run([sys.executable, __file__, "--one-cost", arm, model_name], capture_output=True,
                                 text=True, check=True, env=os.environ | MALLOC)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    import torch

    from mixer_ft.atomic import atomic_write_text, json_text

    where = "cuda" if torch.cuda.is_available() else "cpu"
    record = {"command": "python benchmarks/methods.py --cost", "device": where, "torch": torch.__version__,
              "precision": "float32", "rows": rows}
    path = Path(args.results) / f"cost_{where}.json"
    atomic_write_text(path, json_text(record, indent=2) + "\n")
    print(f"cost: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/transfer/data", help="make_data.py's --out")
    ap.add_argument("--results", default="results/methods")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value for every training run")
    ap.add_argument("--cost", action="store_true", help="measure memory and step time instead of training")
    ap.add_argument("--one-cost", nargs=2, metavar=("ARM", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_cost:
        print(json.dumps(one_cost(*args.one_cost)))
    elif args.cost:
        cost(args)
    else:
        runs(args)


if __name__ == "__main__":
    main()
