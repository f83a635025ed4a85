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
    assert len(rows) == 7 and all(row in text("README.md") for row in rows)
    scratch = json.loads(text("results/scratch_cifar10_2026-12-08.json"))  # the row's run: the image alone
    for figure in (scratch["test_accuracy"], scratch["test_accuracy_views"]):  # 71.96%, 74.08%: in the recipe table too
        assert f"{100 * figure:.2f}%" in text("README.md") and f"{100 * figure:.2f}%" in text("docs/results.md")
    assert f"{scratch['wall_clock_s'] / 3600:.1f} h" in text("docs/results.md")


def test_the_transfer_table_is_what_report_py_computes_from_its_records():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transfer" / "report.py"), "--results",
                          str(REPO / "results" / "transfer"), "--figure", ""], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    rows = [re.sub(r" \(\d+\)", "", line) for line in out.stdout.splitlines()
            if re.match(r"\| [\d,]+ \| \d", line) and "+-" in line]
    assert len(rows) == 4 and all(row in text("docs/transfer.md") for row in rows), rows


def test_the_methods_table_is_what_methods_report_computes_from_its_records():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "methods_report.py"), "--results",
                          str(REPO / "results" / "methods"), "--figure", ""], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(rows) == 7 and all(row in text("docs/methods.md") for row in rows), rows


@pytest.mark.parametrize("record,row", [
    ("nvidia-h200_B16_b256_bf16.json", "| GPU: NVIDIA H200 (2026-11-26) | B/16 | 256 | bf16 |"),
    ("nvidia-h200_L16_b128_bf16.json", "| GPU: NVIDIA H200 (2026-11-26) | L/16 | 128 | bf16 |"),
    ("nvidia-h200_2026-12-04/nvidia-h200_B16_b256_bf16.json", "| GPU: NVIDIA H200 (2026-12-04) | B/16 | 256 | bf16 |"),
    ("nvidia-h200_2026-12-04/step_profile_nvidia-h200_L16_b128_compile.json",
     "| GPU: NVIDIA H200 (2026-12-04) | L/16 | 128 | bf16 |"),
])
def test_the_gpu_rows_of_the_speed_doc_equal_their_bench_records(record, row):
    r = json.loads(text(f"results/bench/{record}"))
    line = next(line for line in text("docs/speed.md").splitlines() if line.startswith(row))
    expect = (f"{r['ours_images_per_s']:,.0f} | {r['timm_images_per_s']:,.0f} | {r['ratio']:.2f}x | "
              f"{100 * r['mfu']:.1f}% |")
    assert expect in line, (expect, line)


def test_the_l16_rate_quoted_is_the_soak_records_steady_median():
    old = [e["images_per_s"] for e in json.loads(text("results/bench/soak_run_l16_nvidia-h200.json"))["history"]["loss"]]
    median = statistics.median(old)
    steady = [w for w in old[1:] if w >= 0.8 * median]  # 0.1.0's loop: its table row in docs/speed.md
    assert f"| {statistics.median(steady):,.0f} (" in text("docs/speed.md")
    new = json.loads(text("results/bench/nvidia-h200_2026-12-04/soak_nvidia-h200.json"))  # today's loop: the README
    import tomllib
    recipe = tomllib.loads(text("recipes/in21k_l16_cifar10.toml"))
    steps, batch = recipe["steps"], recipe["global_batch"]
    readme = " ".join(text("README.md").split())
    assert f"ran {new['images_per_s']:,.0f} images/s" in readme
    assert f"about {steps * batch / new['images_per_s'] / 60:.0f} minutes" in readme


def test_the_few_shot_figures_equal_their_record():
    r = json.loads(text("results/fewshot_runs-smoke-cifar10-model_custom_32px_cifar10.json"))["shots"]
    doc = text("docs/fewshot.md")
    assert f"10-shot {100 * r['10']['mean']:.2f}% +- {100 * r['10']['std']:.2f}" in doc
    assert f"1-shot {100 * r['1']['mean']:.2f}%" in doc and f"25-shot {100 * r['25']['mean']:.2f}%" in doc


def test_the_2026_12_04_gpu_figures_of_the_speed_doc_are_computed_from_their_records():
    """The speed check's table, the profile's shares, the L/16 soak and the four-row H200-hours, each recomputed
    from the records in results/bench/nvidia-h200_2026-12-04/ and found in docs/speed.md."""
    import tomllib
    folder = "results/bench/nvidia-h200_2026-12-04"
    doc = text("docs/speed.md")
    speed = json.loads(text(f"{folder}/speed_nvidia-h200.json"))
    assert f"ran {speed['bare_step_images_per_s']:,.0f} images/s" in doc
    for name, run in speed["runs"].items():
        cells = (f"| {run['steady_images_per_s']:,.0f} | {speed['finetune_over_step'][name]:.3f}x | "
                 f"{run['slow_windows']} | {run['peak_compile_workers']} |")
        assert any(line.startswith(f"| {name} |") and line.endswith(cells) for line in doc.splitlines()), cells
    assert speed["resumed_equals_uninterrupted"] and speed["resumed_max_abs_difference"] == 0
    host = json.loads(text(f"{folder}/host_step_nvidia-h200_B16_b256.json"))["pieces"]
    today = ("boxes", "gather, on the device", "preprocess", "optimizer, multi-tensor", "loss check, on the device",
             "log, in place", "signal")
    step_ms = 1000 * speed["global_batch"] / speed["bare_step_images_per_s"]
    assert f"about {sum(host[p]['issue_ms'] for p in today):.1f} ms of a {step_ms:.0f} ms step" in " ".join(doc.split())
    profile = json.loads(text(f"{folder}/step_profile_nvidia-h200_L16_b128_compile.json"))
    busy = profile["profile"]["busy_ms"]
    flat = " ".join(doc.split())  # the doc's lines wrap anywhere
    for words, key in (("matrix products", "matmul_ms"), ("normalisation (LayerNorm)", "normalisation_ms"),
                       ("elementwise kernels (GELU, residual adds, casts)", "elementwise_ms"),
                       ("copies", "memory_ms"), ("the optimizer", "optimizer_ms")):
        assert f"{words} {100 * profile['profile'][key] / busy:.1f}%" in flat, words
    assert f"MFU is {100 * profile['mfu']:.1f}% ({profile['ours_images_per_s']:,.0f} images/s)" in flat
    soak = json.loads(text(f"{folder}/soak_nvidia-h200.json"))
    after = soak["images_per_s_windows"]
    assert f"{soak['images_per_s']:,.0f} images/s steady ({min(after):,.0f}-{max(after):,.0f}" in flat
    assert not soak["slow_windows"] and f"drift {100 * soak['drift']:+.1f}%" in flat
    assert f"a checkpoint {soak['checkpoint_s']:.1f} s" in flat and f"warm start {soak['warmup_s']:.1f} s" in flat
    # The published CIFAR-10 rows with an upstream, each at its recipe's steps and global batch
    published = tomllib.loads(text("mixer_ft/report/published.toml"))["row"]
    rows = [r for r in published if r["dataset"] == "cifar10" and r["upstream"] != "none"]
    rate = {"L/16": soak["images_per_s"], "B/16": speed["runs"]["straight"]["steady_images_per_s"]}
    seconds = 0.0
    for row in rows:
        recipe = tomllib.loads(text(row["recipe"]))
        seconds += recipe["steps"] * recipe["global_batch"] / rate[row["model"]]
    assert len(rows) == 4 and f"take {seconds / 3600:.2f} H200-hours of steps" in flat
    assert f"took {sum(r['wall_clock_h'] for r in rows):.1f} h on 4x V100" in doc


def test_the_data_scale_table_is_its_record():
    r = json.loads(text("results/bench/data_scale_cpu.json"))
    doc = " ".join(text("docs/speed.md").split())
    names = {"decoded": "decoded store (`MIXER_FT_STORE=decoded`; 0.1.0's)", "encoded": "compact store (image folder)",
             "shards": "compact store (webdataset shards)", "stream": "streamed shards (`--streaming`, no cache)",
             "timm": "timm's loader (`create_dataset` + `create_loader`)"}
    for way, label in names.items():
        m = r["results"][way]
        disk = "none" if not m["cache_bytes"] else f"{m['cache_bytes'] / 1e9:.2f} GB"
        rates = " | ".join(f"{m['images_per_s'][w]:,.0f}" for w in ("1", "2"))
        row = f"| {label} | {disk} | {m['first_batch_s']:.1f} s | {rates} | {m['peak_rss_bytes'] / 1e9:.2f} GB |"
        assert row in doc, row
    dec, enc, sh, st, timm = (r["results"][k] for k in ("decoded", "encoded", "shards", "stream", "timm"))
    assert f"takes {100 * r['encoded_cache_share']:.1f}% of the decoded store's" in doc
    assert f"take {100 * r['encoded_cache_share']:.1f}% of the decoded store" in " ".join(text("docs/data.md").split())
    assert f"{dec['first_batch_s'] / enc['first_batch_s']:.1f}x sooner from a folder, " \
           f"{dec['first_batch_s'] / sh['first_batch_s']:.1f}x from cached shards" in doc
    assert f"{dec['first_batch_s'] / st['first_batch_s']:.1f}x from streamed shards" in doc
    over, ratio = r["encoded_over_timm"], (lambda a, w: a["images_per_s"][w] / timm["images_per_s"][w])
    assert f"the compact store is {over['1']:.2f}x timm's loader with 1 worker and {over['2']:.2f}x with 2**" in doc
    assert f"from cached shards {ratio(sh, '1'):.2f}x and {ratio(sh, '2'):.2f}x" in doc
    assert f"is {ratio(dec, '1'):.2f}x and {ratio(dec, '2'):.2f}x." in doc
    assert f"are {r['stream_over_timm']['1']:.2f}x and {r['stream_over_timm']['2']:.2f}x timm's loader" in doc
    spread = [(m["images_per_s_spread"]["2"], m["images_per_s"]["2"]) for m in (enc, timm)]
    assert all(low <= median <= high for (low, high), median in spread)
    assert "windows with 2 workers ran {:,.0f}-{:,.0f} images/s, timm's {:,.0f}-{:,.0f}".format(
        *spread[0][0], *spread[1][0]) in doc


def test_the_device_decode_figures_are_their_record():
    r = json.loads(text("results/bench/device_decode_cpu.json"))
    doc = " ".join(text("docs/data.md").split())
    assert r["agreement"]["same_images"] and r["agreement"]["mean_levels"] == 0.0  # one decoder on a CPU: bit for bit
    assert (f"decoded {r['device_images_per_s']['median']:,.0f} images/s this way against "
            f"{r['host_images_per_s']['median']:,.0f} from the host's decode threads "
            f"({r['device_images_per_s']['median'] / r['host_images_per_s']['median']:.2f}x;") in doc


def test_the_threads_table_and_ratios_are_their_record():
    rows = json.loads(text("results/bench/threads_cpu.json"))["rows"]
    rate = {(r["model"], r["condition"], r["setting"]): r["images_per_s"] for r in rows}
    doc = text("docs/finetune.md")
    for model, shown in (("smoke", "smoke recipe's"), ("S/32 64px", "S/32 at 64 px")):
        for condition in ("quiet", "busy"):
            cells = " | ".join(f"{rate[(model, condition, k)]:,.0f}" for k in ("default", "spin 10k", "passive", "one thread"))
            assert f"| {shown} | {condition} | {cells} |" in doc, (model, condition, cells)
    busy = [rate[(m, "busy", "spin 10k")] / rate[(m, "busy", "default")] for m in ("smoke", "S/32 64px")]
    quiet = [rate[(m, "quiet", "spin 10k")] / rate[(m, "quiet", "default")] for m in ("smoke", "S/32 64px")]
    assert f"{busy[0]:.1f}x (smoke) and {busy[1]:.1f}x (S/32)" in doc and f"({quiet[0]:.2f}x and {quiet[1]:.2f}x)" in doc
    assert min(quiet) > 0.9 and min(busy) > 1.5  # what the default of 10,000 spins rests on
