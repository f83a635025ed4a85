"""The transfer experiment, end to end: every command it runs, printed before it runs.

    python benchmarks/transfer/make_data.py
    python benchmarks/transfer/run.py
    python benchmarks/transfer/report.py

1. The upstream: recipes/transfer/upstream_animals.toml (six animal classes, from random weights).
2. For each number of labelled images per vehicle class (10, 25, 100, 1,000):
   - scratch and fine-tuned arms: a `mixer-ft sweep` of the lr on seed 0's draw, chosen on minival;
     seeds 1 and 2 (their own draws of the images) at the chosen lr;
   - the fine-tuned arm with the upstream's augmentation (shifts, no Inception crop), at its chosen lr;
   - the fine-tuned sweep continued beyond the paper's grid (lr 0.06 and 0.1, seed 0);
   - few-shot: one `mixer-ft fewshot` of the upstream's frozen features, every size, 3 seeds.
A step whose record is in results/transfer already is skipped, so an interrupted run goes on where it
stopped; the run says how many it skipped. The repository ships the records of its own run there, so to run
the experiment again give it a fresh folder (and the figure its own name):

    python benchmarks/transfer/run.py --results results/transfer-rerun
    python benchmarks/transfer/report.py --results results/transfer-rerun --figure transfer-rerun.png

``--set key=value`` (repeatable) goes to every training command (tests use it to cut steps).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

SIZES = (10, 25, 100, 1000)
SEEDS = (0, 1, 2)
ARMS = {  # arm: (recipe, the lr grid its sweep tries)
    "scratch": ("recipes/transfer/scratch_vehicles.toml", "0.002,0.004,0.008"),
    "finetune": ("recipes/transfer/finetune_vehicles.toml", "0.001,0.003,0.01,0.03"),  # the paper's grid
}
# A variant of the fine-tuned arm, at the lr its sweep chose, every seed: the upstream's own augmentation
# (2-pixel shifts, no Inception crop), to tell the protocol's crops at 32 px from the transfer itself.
VARIANTS = {"finetuneshift": ("finetune", ["--set=crop_area_min=1.0", "--set=translate=2"])}
# Beyond the paper's grid: where the fine-tuned sweep chooses its largest lr, did the grid hold it back?
# Two larger values on seed 0, as a sweep of their own (the arms above are not changed by it).
BEYOND_GRID = {"finetune": "0.06,0.1"}
UPSTREAM_RECIPE = "recipes/transfer/upstream_animals.toml"
UPSTREAM_RUN = "transfer_upstream_animals"


def mixer_ft(*args: str) -> None:
    """Run one ``mixer-ft`` command (this interpreter's), printed first; stop the experiment if it fails."""
    print("$ mixer-ft " + shlex.join(args), flush=True)
    t = time.time()
    try:
        rc = subprocess.call([sys.executable, "-m", "mixer_ft", *args])
    except KeyboardInterrupt:  # the command stops at its next checkpoint too (it shares the terminal's Ctrl-C)
        rc = 130
    if rc in (130, 143):
        print("stopped; run this again to go on where it stopped.", file=sys.stderr)
        sys.exit(rc)
    if rc:
        print(f"error: `mixer-ft {shlex.join(args)}` failed (exit {rc}); fix it and run this again to go on.",
              file=sys.stderr)
        sys.exit(2)
    print(f"  ({time.time() - t:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/transfer/data", help="make_data.py's --out")
    ap.add_argument("--results", default="results/transfer")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value for every training run")
    args = ap.parse_args()
    results, data = Path(args.results), Path(args.data)
    if not (data / "upstream").is_dir():
        print(f"error: no data in {data}; run benchmarks/transfer/make_data.py first (from the repository root).",
              file=sys.stderr)
        sys.exit(2)
    sizes, seeds = [int(v) for v in args.sizes.split(",")], [int(v) for v in args.seeds.split(",")]
    common = [f"--set=results_dir={json.dumps(str(results))}"] + [f"--set={s}" for s in args.sets]
    upstream_model = f"runs/{UPSTREAM_RUN}/model"

    skipped, steps = [], [0]
    if not (results / f"{UPSTREAM_RUN}.json").exists():
        mixer_ft("finetune", "--recipe", UPSTREAM_RECIPE, f"--dataset={data / 'upstream'}", *common)
    else:
        skipped.append(UPSTREAM_RUN)

    def train(command: str, arm: str, n: int, s: int, name: str, *extra: str) -> Path:
        """One downstream `mixer-ft finetune` or `sweep` of ``arm``'s recipe on seed ``s``'s draw of ``n``
        images a class, unless its record is there already; returns that record's path."""
        record = results / (f"sweep_{name}.json" if command == "sweep" else f"{name}.json")
        steps[0] += 1
        if record.exists():
            skipped.append(record.name)
        else:
            upstream = [] if arm == "scratch" else [f"--set=upstream={json.dumps(upstream_model)}"]
            mixer_ft(command, "--recipe", ARMS[arm][0], f"--dataset={data / f'downstream_n{n}_s{s}'}",
                     f"--set=seed={s}", f"--set=name={name}", *extra, *upstream, *common)
        return record

    s0 = seeds[0]
    for n in sizes:
        chosen = {}  # arm: the lr its sweep chose on seed 0's minival
        for arm, (_, grid) in ARMS.items():
            sweep = train("sweep", arm, n, s0, f"transfer_{arm}_n{n}_s{s0}", f"--grid=lr={grid}")
            chosen[arm] = json.loads(sweep.read_text())["chosen"]["lr"]
            for s in seeds[1:]:
                train("finetune", arm, n, s, f"transfer_{arm}_n{n}_s{s}", f"--lr={chosen[arm]}")
        for variant, (arm, changes) in VARIANTS.items():
            for s in seeds:
                train("finetune", arm, n, s, f"transfer_{variant}_n{n}_s{s}", f"--lr={chosen[arm]}", *changes)
        for arm, grid in BEYOND_GRID.items():
            train("sweep", arm, n, s0, f"transfer_{arm}wide_n{n}_s{s0}", f"--grid=lr={grid}")
    if not list(results.glob("fewshot_*.json")):  # its record: fewshot_<weights>_<data set>.json
        mixer_ft("fewshot", f"--upstream={upstream_model}", f"--dataset={data / 'downstream'}",
                 f"--shots={args.sizes}", f"--seeds={len(seeds)}", f"--results={results}")
    else:
        skipped.append("fewshot")
    if skipped:
        print(f"skipped {len(skipped)} of {steps[0] + 2} steps whose records are in {results} already"
              f"{' (all of them: the repository ships its own run there)' if len(skipped) == steps[0] + 2 else ''}. "
              f"To run them again, into a fresh folder: python benchmarks/transfer/run.py --results "
              f"{results}-rerun && python benchmarks/transfer/report.py --results {results}-rerun --figure "
              f"transfer-rerun.png", file=sys.stderr)

if __name__ == "__main__":
    main()
