"""The methods comparison's table and figure, from the records in results/methods alone (docs/methods.md).

    python benchmarks/methods_report.py [--results results/methods] [--figure docs/methods.png]

Prints a Markdown table: for each method, test accuracy (mean +- std over seeds) at each number of labelled
images a class, the lr its sweep chose, the share of the parameters it trains, and, from the cost record,
the peak memory its steps add and its step time, each beside full fine-tuning's measured in the same run.
The figure (accuracy against trained parameters) needs matplotlib; the table does not.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

LABELS = {"full": "full (upstream protocol)", "lora4": "LoRA, rank 4", "lora16": "LoRA, rank 16",
          "bitfit": "BitFit", "head": "head only", "full_ema": "full + EMA 0.99", "full_mix": "full + mixup/cutmix"}


def collect(results: Path) -> dict[str, dict[int, dict]]:
    """{arm: {images a class: {"acc": [test accuracy of each seed], "lr": chosen lr}}} from the records."""
    out: dict[str, dict[int, dict]] = {}
    for path in sorted(results.glob("sweep_methods_*.json")) + sorted(results.glob("methods_*_n*_s*.json")):
        rec = json.loads(path.read_text())
        m = re.fullmatch(r"(?:sweep_)?methods_(\w+?)_n(\d+)_s\d+", rec.get("name", ""))
        if not m or m[1] not in LABELS:
            continue
        acc = rec.get("test_accuracy")  # a sweep's: its chosen point's
        cell = out.setdefault(m[1], {}).setdefault(int(m[2]), {"acc": [], "lr": None})
        cell["acc"].append(acc)
        if "chosen" in rec:
            cell["lr"] = rec["chosen"]["lr"]
    return out


def cost_rows(results: Path) -> dict[tuple[str, str], dict]:
    """{(arm, model): row} of the cost record (results/methods/cost_cpu.json), where it is."""
    path = results / "cost_cpu.json"
    return {(r["arm"], r["model"]): r for r in json.loads(path.read_text())["rows"]} if path.exists() else {}


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * statistics.mean(values):.1f}{spread} ({len(values)})"


def table(acc: dict[str, dict[int, dict]], cost: dict[tuple[str, str], dict]) -> str:
    sizes = sorted({n for arm in acc.values() for n in arm})
    head = ["method"] + [f"{n:,} a class: test % (seeds)" for n in sizes] + ["lr chosen", "trained (32 px model / B/16)",
                                                                         "peak memory vs full (32 px / B/16 at 8 / at 2)",
                                                                         "step time vs full (32 px / B/16 at 8 / at 2)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, label in LABELS.items():
        if arm not in acc:
            continue
        lrs = "/".join(f"{acc[arm][n]['lr']:g}" if acc[arm][n]["lr"] else "–" for n in sizes if n in acc[arm])
        row = [label] + [_cell(acc[arm].get(n, {}).get("acc", [])) for n in sizes] + [lrs]
        shares = [f"{100 * cost[(arm, m)]['trained_share']:.2f}%" for m in ("transfer_32px", "B16_224px")
                  if (arm, m) in cost]
        row.append(" / ".join(shares) or "–")
        for key in ("peak_bytes", "step_s"):
            ratios = [cost[(arm, m)][key] / cost[("full", m)][key] for m in ("transfer_32px", "B16_224px", "B16_224px_mb2")
                      if (arm, m) in cost and ("full", m) in cost]
            row.append(" / ".join(f"{r:.2f}x" for r in ratios) or "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def figure(acc: dict[str, dict[int, dict]], cost: dict[tuple[str, str], dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sizes = sorted({n for arm in acc.values() for n in arm})
    colours = dict(zip(LABELS, plt.get_cmap("tab10").colors))  # a colour a method, a marker a size
    for n, marker in zip(sizes, "os^"):
        for arm, label in LABELS.items():
            own = cost.get((arm, "transfer_32px"))
            if arm in acc and n in acc[arm] and own:
                values = acc[arm][n]["acc"]
                ax.errorbar(100 * own["trained_share"], 100 * statistics.mean(values),
                            yerr=100 * statistics.stdev(values) if len(values) > 1 else 0, fmt=marker, capsize=3,
                            color=colours[arm], label=label if n == sizes[0] else None)
    for n, marker in zip(sizes, "os^"):
        ax.plot([], [], marker, color="grey", label=f"{n:,} images a class")
    ax.set_xscale("log")
    ax.set_xlabel("parameters trained (% of the transfer model's)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results/methods")
    ap.add_argument("--figure", default="docs/methods.png", help="'' for none")
    args = ap.parse_args()
    results = Path(args.results)
    acc, cost = collect(results), cost_rows(results)
    print(table(acc, cost))
    if args.figure:
        figure(acc, cost, Path(args.figure))
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
