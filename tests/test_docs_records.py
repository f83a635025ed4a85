"""Figures in the README and docs/ come from run records, and equal them: each test recomputes a figure from
its record (with the code that makes it, where there is such code) and finds it in the text."""

import json
import re
import statistics
import subprocess
import sys

import pytest

from conftest import REPO, run_cli

TEXTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def text(name: str) -> str:
    return (REPO / name).read_text()


def test_every_record_file_the_docs_cite_exists():
    cited = {m for path in TEXTS for m in re.findall(r"`(results/[\w./*-]+\.json)`", path.read_text())}
    assert cited and not [c for c in cited if "*" not in c and not (REPO / c).is_file()]


def test_the_readme_results_table_is_what_mixer_ft_table_prints_for_the_shipped_records():
    out = run_cli("table", "--results", REPO / "results", "--format", "markdown")
    main = out.stdout.split("\n\n")[0]  # the published rows (the few-shot section follows, in docs/fewshot.md)
    rows = [line for line in main.splitlines() if line.startswith("| ")]
    assert len(rows) == 6 and all(row in text("README.md") for row in rows)
    scratch = json.loads(text("results/scratch_cifar10.json"))
    assert f"{100 * scratch['test_accuracy']:.2f}%" in text("README.md")  # 75.75%, in the recipe table too


def test_the_transfer_table_is_what_report_py_computes_from_its_records():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transfer" / "report.py"), "--results",
                          str(REPO / "results" / "transfer"), "--figure", ""], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    rows = [re.sub(r" \(\d+\)", "", line) for line in out.stdout.splitlines()
            if re.match(r"\| [\d,]+ \| \d", line) and "+-" in line]
    assert len(rows) == 4 and all(row in text("docs/transfer.md") for row in rows), rows


@pytest.mark.parametrize("record,row", [
    ("nvidia-h200_B16_b256_bf16.json", "| GPU: NVIDIA H200 (2026-11-26) | B/16 | 256 | bf16 |"),
    ("nvidia-h200_L16_b128_bf16.json", "| GPU: NVIDIA H200 (2026-11-26) | L/16 | 128 | bf16 |"),
])
def test_the_gpu_rows_of_the_speed_doc_equal_their_bench_records(record, row):
    r = json.loads(text(f"results/bench/{record}"))
    line = next(line for line in text("docs/speed.md").splitlines() if line.startswith(row))
    expect = (f"{r['ours_images_per_s']:,.0f} | {r['timm_images_per_s']:,.0f} | {r['ratio']:.2f}x | "
              f"{100 * r['mfu']:.1f}% |")
    assert expect in line, (expect, line)


def test_the_l16_rate_quoted_is_the_soak_records_steady_median():
    windows = [e["images_per_s"] for e in json.loads(text("results/bench/soak_run_l16_nvidia-h200.json"))["history"]["loss"]]
    median = statistics.median(windows)
    steady = [w for w in windows[1:] if w >= 0.8 * median]
    quoted = f"{statistics.median(steady):,.0f}"
    assert quoted == "1,467" and f"ran {quoted}\nimages/s" in text("README.md") and f"| {quoted} (" in text("docs/speed.md")


def test_the_few_shot_figures_equal_their_record():
    r = json.loads(text("results/fewshot_runs-smoke-cifar10-model_custom_32px_cifar10.json"))["shots"]
    doc = text("docs/fewshot.md")
    assert f"10-shot {100 * r['10']['mean']:.2f}% +- {100 * r['10']['std']:.2f}" in doc
    assert f"1-shot {100 * r['1']['mean']:.2f}%" in doc and f"25-shot {100 * r['25']['mean']:.2f}%" in doc
