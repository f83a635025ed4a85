"""The transfer experiment's table and figure, from the records in results/transfer alone.

    python benchmarks/transfer/report.py [--results results/transfer] [--figure docs/transfer.png]

Prints a Markdown table (test accuracy, mean +- std over seeds, per labelled images per class and
arm) and draws accuracy against labelled images per class (log scale), spread as error bars.
The figure needs matplotlib (pip install matplotlib); the table does not.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ARMS = {"scratch": "from scratch", "finetune": "fine-tuned (upstream protocol)",
        "finetuneshift": "fine-tuned, shifts for crops", "fewshot": "few-shot linear probe"}


def collect(results: Path) -> dict[str, dict[int, list[float]]]:
    """{arm: {labelled images per class: [test accuracy of each seed]}} from the records."""
    out: dict[str, dict[int, list[float]]] = {arm: {} for arm in ARMS}
    for pattern in ("sweep_transfer_*.json",  # seed 0: the point chosen on minival
                    "transfer_*_n*_s*.json"):  # the other seeds, at the chosen lr
        for path in sorted(results.glob(pattern)):
            rec = json.loads(path.read_text())
            # Sweep points (their names end in _lr...) and the beyond-the-grid sweeps are no arm's.
            m = re.fullmatch(r"(?:sweep_)?transfer_(\w+?)_n(\d+)_s\d+", rec.get("name", ""))
            if m and m[1] in out and rec.get("test_accuracy") is not None:
                out[m[1]].setdefault(int(m[2]), []).append(rec["test_accuracy"])
    for path in results.glob("fewshot_*.json"):
        for k, v in json.loads(path.read_text())["shots"].items():
            out["fewshot"][int(k)] = v["per_seed"]
    return out


def table(acc: dict[str, dict[int, list[float]]]) -> str:
    """Markdown: one row per labelled-images count, one column per arm, mean +- std (seeds)."""
    sizes = sorted({n for per in acc.values() for n in per})
    lines = ["| labelled images per class | " + " | ".join(ARMS.values()) + " |",
             "|---:|" + "---:|" * len(ARMS)]
    for n in sizes:
        cells = []
        for arm in ARMS:
            v = acc[arm].get(n, [])
            sd = f" +- {100 * statistics.stdev(v):.1f}" if len(v) > 1 else ""
            cells.append(f"{100 * statistics.mean(v):.1f}{sd} ({len(v)})" if v else "-")
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(test accuracy %, 4,000 test images, 4 classes; mean +- std over (seeds))\n"


def beyond_grid(results: Path) -> str:
    """Seed 0's fine-tuned sweep, every lr of the paper's grid and beyond it: minival (the choice) and test."""
    rows = {}
    for path in sorted(results.glob("sweep_transfer_finetune*_n*_s0.json")):
        rec = json.loads(path.read_text())
        n = int(re.search(r"_n(\d+)_", rec["name"])[1])
        for p in rec["points"]:
            if p["minival_accuracy"] is not None:
                rows.setdefault(n, {})[p["settings"]["lr"]] = (p["minival_accuracy"], p["test_accuracy"])
    if not rows:
        return ""
    lrs = sorted({lr for per in rows.values() for lr in per})
    lines = ["| labelled images per class | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|---:|" + "---:|" * len(lrs)]
    for n in sorted(rows):
        cells = [f"{100 * rows[n][lr][0]:.1f} / {100 * rows[n][lr][1]:.1f}" if lr in rows[n] else "-" for lr in lrs]
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(fine-tuned by the protocol, seed 0: minival / test accuracy %)\n"


def figure(acc: dict[str, dict[int, list[float]]], path: Path) -> None:
    """Accuracy against labelled images per class, log x, one line per arm with its spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for arm, label in ARMS.items():
        sizes = sorted(acc[arm])
        if not sizes:
            continue
        means = [100 * statistics.mean(acc[arm][n]) for n in sizes]
        stds = [100 * statistics.stdev(acc[arm][n]) if len(acc[arm][n]) > 1 else 0 for n in sizes]
        ax.errorbar(sizes, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.axhline(25, color="grey", lw=0.8, ls=":", label="chance (4 classes)")
    ax.set_xscale("log")
    ticks = sorted({n for per in acc.values() for n in per})
    ax.set_xticks(ticks, [f"{n:,}" for n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled images per class (vehicles)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Transfer from CIFAR-10 animals to vehicles (Mixer, 32 px)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results/transfer")
    ap.add_argument("--figure", default="docs/transfer.png", help="'' for none")
    args = ap.parse_args()
    acc = collect(Path(args.results))
    if not any(acc.values()):
        print(f"error: no transfer records in {args.results}; run benchmarks/transfer/run.py first.", file=sys.stderr)
        sys.exit(2)
    print(table(acc), end="")
    beyond = beyond_grid(Path(args.results))
    if beyond:
        print("\n" + beyond, end="")
    if args.figure:
        try:
            figure(acc, Path(args.figure))
        except ImportError:
            print("error: the figure needs matplotlib (pip install matplotlib); --figure '' prints the table only.",
                  file=sys.stderr)
            sys.exit(2)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
