"""Summarise a GPU soak (benchmarks/gpu_soak.sh) into one record: soak_<device>.json.

    python benchmarks/soak_report.py --records OUT --runs RUNS --out OUT

From the soak run's record: images/s per log window (steady after warm-up: the drift between the
second and the last third of the run), peak memory per window (CUDA; flat: the spread over the run),
seconds in evaluation and in checkpoints, graph breaks and compiled graphs. From the two equality
runs (when there are: SOAK_PARTS=soak leaves them out): whether the resumed run's final weights equal the
uninterrupted run's (and, if not, by how much). A slow window is one under 0.8x the run's median rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixer_ft.atomic import atomic_write_text  # noqa: E402
from mixer_ft.report.bench import device_slug  # noqa: E402


def thirds(values: list[float]) -> tuple[float, float]:
    """Means of the second and the last third: warm-up (the first third) left out."""
    k = max(len(values) // 3, 1)
    return statistics.fmean(values[k:2 * k] or values), statistics.fmean(values[-k:])


def weights_difference(a: Path, b: Path) -> tuple[bool, float]:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    if x.keys() != y.keys():
        return False, float("inf")
    worst = max(float((x[k].float() - y[k].float()).abs().max()) for k in x)
    return all(bool((x[k] == y[k]).all()) for k in x), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, required=True, help="folder of the soak's run records")
    parser.add_argument("--runs", type=Path, required=True, help="folder of the soak's run folders")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    soak = json.loads((args.records / "soak.json").read_text())
    windows = [e for e in soak["history"]["loss"] if e.get("images_per_s")]
    rates = [e["images_per_s"] for e in windows]
    middle, last = thirds(rates)
    peaks = [e["peak_memory_bytes"] for e in windows if e.get("peak_memory_bytes")]
    equality = all((args.runs / n / "model").is_dir() for n in ("straight", "resumed"))  # SOAK_PARTS=soak: none
    bitwise, worst = weights_difference(args.runs / "straight" / "model", args.runs / "resumed" / "model") \
        if equality else (None, None)
    median = statistics.median(rates) if rates else None
    report = {
        "kind": "soak", "device": soak["hardware"]["device"], "model": soak["model"], "steps": soak["steps"],
        "global_batch": soak["global_batch"], "micro_batch": soak["micro_batch"], "precision": soak["mixed_precision"],
        "compiled": soak["compiled"], "graph_breaks": soak["graph_breaks"], "compiled_graphs": soak["compiled_graphs"],
        "wall_clock_s": soak["wall_clock_s"], "warmup_s": soak["warmup_s"], "eval_s": soak["eval_s"],
        "checkpoint_s": soak["checkpoint_s"], "images_per_s": soak["images_per_s"],
        "images_per_s_windows": rates, "drift": round(last / middle - 1, 4) if middle else None,
        "peak_memory_bytes_windows": peaks,
        "memory_spread": round(max(peaks) / min(peaks) - 1, 4) if peaks else None,
        "slow_windows": [e["step"] for e in windows if median and e["images_per_s"] < 0.8 * median],
        "resumed_equals_uninterrupted": bitwise, "resumed_max_abs_difference": worst,
        "minival": soak["history"]["minival"], "test_accuracy": soak["test_accuracy"],
        "versions": soak["versions"], "git_commit": soak["git_commit"], "finished": soak["finished"],
    }
    path = atomic_write_text(args.out / f"soak_{device_slug(report['device'])}.json", json.dumps(report, indent=2) + "\n")
    print(f"{path}: {report['images_per_s']:,.0f} img/s, drift {report['drift']:+.1%}, memory spread "
          f"{report['memory_spread']}, eval {report['eval_s']} s, checkpoints {report['checkpoint_s']} s, "
          f"slow windows {report['slow_windows']}, "
          + (f"resumed = uninterrupted: {bitwise} (max difference {worst:.3g})" if equality else "no equality runs"))


if __name__ == "__main__":
    main()
