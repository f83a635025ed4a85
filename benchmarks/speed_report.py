"""Summarise the GPU speed check (benchmarks/gpu_speed.sh) into one record: speed_<device>.json.

    python benchmarks/speed_report.py --records OUT --runs RUNS --out OUT

- The fine-tune over its bare step: the "straight" run's steady images/s (the median of its windows
  after the first) over `mixer-ft bench`'s rate for the same model and batch.
- Every run's windows ("straight", "resumed", "before", "graphs", whichever are there). A window under
  0.8x its run's median is slow; for each slow window, the CPU the run's watch saw meanwhile: the
  training process's own, inductor's compile workers', others', the machine's.
- Each run's CPU over time (2-second buckets of its watch, the resumed part after the first):
  [seconds, training process, compile workers, their number, machine].
- Whether the resumed run's final weights equal the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soak_report import weights_difference  # noqa: E402 - this folder's, beside this script

from mixer_ft.atomic import atomic_write_text  # noqa: E402
from mixer_ft.report.bench import device_slug  # noqa: E402

RUNS = ("straight", "resumed", "before", "graphs")
SLOW = 0.8


def watched(folder: Path, name: str) -> list[dict]:
    """The CPU samples of a run's watch files (its resumed part's too), oldest first."""
    samples = []
    for path in (folder / f"watch_{name}.json", folder / f"watch_{name}_resumed.json"):
        if path.is_file():
            samples += json.loads(path.read_text())["samples"]
    return sorted(samples, key=lambda s: s["t"])


def cpu_between(samples: list[dict], t0: float, t1: float) -> dict[str, float] | None:
    """Mean CPU (percent of one core; the machine's in percent of all) of the samples in [t0, t1]."""
    inside = [s for s in samples if t0 <= s["t"] <= t1]
    if not inside:
        return None
    keys = ("main", "compile_workers", "compile_workers_n", "other", "machine")
    return {k: round(statistics.fmean(s.get(k, 0) for s in inside), 1) for k in keys}


def timeline(samples: list[dict], bucket: float = 2.0) -> list[list[float]]:
    """[seconds from the first sample, main, compile workers, their number, machine] every ``bucket`` seconds."""
    if not samples:
        return []
    t0, rows = samples[0]["t"], {}
    for s in samples:
        rows.setdefault(int((s["t"] - t0) // bucket), []).append(s)
    return [[k * bucket] + [round(statistics.fmean(r.get(key, 0) for r in group), 1)
                            for key in ("main", "compile_workers", "compile_workers_n", "machine")]
            for k, group in sorted(rows.items())]


def run_summary(record: dict, samples: list[dict]) -> dict:
    windows = [e for e in record["history"]["loss"] if e.get("images_per_s")]
    rates = [e["images_per_s"] for e in windows]
    median = statistics.median(rates) if rates else None
    rows, previous = [], None
    for e in record["history"]["loss"]:
        row = {"step": e["step"], "images_per_s": e.get("images_per_s")}
        if median and e.get("images_per_s") and e["images_per_s"] < SLOW * median:
            row["slow"] = True
            if previous is not None and "time" in e:
                row["cpu"] = cpu_between(samples, previous, e["time"])
        previous = e.get("time")
        rows.append(row)
    steady = rates[1:] or rates
    return {"images_per_s": record["images_per_s"], "median_window": median,
            "steady_images_per_s": statistics.median(steady) if steady else None,
            "slow_windows": sum(1 for r in rows if r.get("slow")), "windows": rows,
            "warmup_s": record["warmup_s"], "compiled": record["compiled"], "graph_breaks": record["graph_breaks"],
            "compile_mode": record.get("compile_mode"), "data_on_device": record.get("data_on_device"),
            "peak_compile_workers": max((s.get("compile_workers_n", 0) for s in samples), default=None),
            "cpu_timeline": timeline(samples),
            "test_accuracy": record["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, required=True, help="folder of the runs' records, bench and watches")
    parser.add_argument("--runs", type=Path, required=True, help="folder of the run folders")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    records = {n: json.loads((args.records / f"{n}.json").read_text()) for n in RUNS
               if (args.records / f"{n}.json").is_file()}
    straight = records["straight"]
    benches = [p for p in sorted(args.records.glob("*.json")) if p.name not in {f"{n}.json" for n in records}
               and '"ours_images_per_s"' in p.read_text() and '"variant"' not in p.read_text()]  # `mixer-ft bench`'s
    if len(benches) != 1:
        sys.exit(f"error: expected one `mixer-ft bench` record in {args.records}, found {len(benches)}")
    bench_path = benches[0]
    bench = json.loads(bench_path.read_text())
    runs = {n: run_summary(r, watched(args.records, n)) for n, r in records.items()}
    step_rate = bench["ours_images_per_s"]
    bitwise, worst = weights_difference(args.runs / "straight" / "model", args.runs / "resumed" / "model")
    report = {
        "kind": "speed", "device": straight["hardware"]["device"], "model": straight["model"],
        "global_batch": straight["global_batch"], "bare_step_images_per_s": step_rate, "bench": bench_path.name,
        "finetune_over_step": {n: round(s["steady_images_per_s"] / step_rate, 3) for n, s in runs.items()
                               if s["steady_images_per_s"]},
        "runs": runs, "resumed_equals_uninterrupted": bitwise, "resumed_max_abs_difference": worst,
        "versions": straight["versions"], "git_commit": straight["git_commit"], "finished": straight["finished"],
    }
    path = atomic_write_text(args.out / f"speed_{device_slug(report['device'])}.json", json.dumps(report, indent=2) + "\n")
    print(f"{path}: bare step {step_rate:,.0f} img/s; fine-tune over step "
          + ", ".join(f"{n} {v:.3f}x" for n, v in report["finetune_over_step"].items())
          + "; slow windows " + ", ".join(f"{n} {s['slow_windows']}" for n, s in runs.items())
          + f"; resumed = uninterrupted: {bitwise} (max difference {worst:.3g})")


if __name__ == "__main__":
    main()
