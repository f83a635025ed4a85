"""The project's GPU scripts (benchmarks/gpu_check.sh, gpu_soak.sh, gpu_profile.sh), dry-run on the CPU: every
step must end with rc=0, so the first run on a GPU spends its minutes on the GPU, not on a broken command."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO


def dry_run(script: str, tmp_path, readme_workdir, extra_env=None) -> tuple[subprocess.CompletedProcess, object]:
    """Run a GPU script's CPU dry run on the small CIFAR-10 cut in the real archive's layout (the dry run
    checks the commands, not the scale), its temporary folders in tmp_path/tmp: (result, scratch folder)."""
    data = readme_workdir.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = os.environ | {"GPU_CHECK_DRY": "1", "OUT": str(tmp_path / "out"), "GPU_CHECK_DATA": str(data),
                        "PYTHON": sys.executable, "TMPDIR": str(scratch)} | (extra_env or {})
    out = subprocess.run(["bash", str(REPO / "benchmarks" / script)], capture_output=True, text=True, env=env,
                         timeout=1200)
    return out, scratch


@pytest.mark.slow
def test_the_gpu_check_dry_run_ends_every_step_with_rc_0(tmp_path, readme_workdir):
    out, scratch = dry_run("gpu_check.sh", tmp_path, readme_workdir)
    tmp_path = tmp_path / "out"
    log = (tmp_path / "log.txt").read_text()
    codes = [line for line in log.splitlines() if line.startswith("rc=")]
    assert len(codes) == 8 and set(codes) == {"rc=0"}, log[-4000:]
    assert out.returncode == 0
    benches = [json.loads(p.read_text()) for p in tmp_path.glob("cpu_*.json")]
    assert benches and all(b["ours_images_per_s"] > 0 and b["timm_images_per_s"] > 0 for b in benches)
    record = json.loads((tmp_path / "gpu_check_l16.json").read_text())
    assert record["test_images"] == 200 and record["steps"] == 2 and record["global_batch"] == 8
    # The run's saved model loads for few-shot features, and the resolution benchmark recorded its ratio.
    fewshot = json.loads(next(tmp_path.glob("fewshot_*.json")).read_text())
    assert fewshot["kind"] == "fewshot" and set(fewshot["shots"]) == {"1", "10"} and fewshot["test_images"] == 200
    cost = json.loads(next(tmp_path.glob("resolution_cost_*.json")).read_text())
    assert cost["sizes"] == [224, 448] and cost["cost_per_image"] > 1
    # decode = "device" measured beside the host's decode threads, its inputs the host's (one decoder on a CPU).
    decode = json.loads((tmp_path / "device_decode_cpu.json").read_text())
    assert decode["agreement"] == {"images": 16, "same_images": True, "mean_levels": 0.0, "worst_image_levels": 0.0}
    assert decode["host_images_per_s"]["median"] > 0 and decode["device_images_per_s"]["median"] > 0
    assert re.search(r"\b\d+ passed\b", log)  # the GPU-side tests (some of them: the suite runs the rest here)
    assert not list(scratch.glob("gpu-check-run.*"))  # the run folder was temporary, and removed


@pytest.mark.slow
def test_the_gpu_soak_dry_run_stops_resumes_and_reports(tmp_path, readme_workdir):
    # SOAK_PARTS=soak: the equality runs are the speed check's too (its dry run below compares them)
    out, scratch = dry_run("gpu_soak.sh", tmp_path, readme_workdir, {"SOAK_PARTS": "soak"})
    log = (tmp_path / "out" / "soak_log.txt").read_text()
    assert out.returncode == 0 and [line for line in log.splitlines() if line.startswith("rc=")] == ["rc=0"] * 2, log[-3000:]
    assert log.count("stopped rc=143") == 1  # the soak was stopped by SIGTERM, then resumed
    report = json.loads((tmp_path / "out" / "soak_cpu.json").read_text())
    assert report["kind"] == "soak" and report["steps"] == 12 and len(report["images_per_s_windows"]) >= 4
    assert report["resumed_equals_uninterrupted"] is None  # no equality runs in this part
    assert report["eval_s"] > 0 and report["checkpoint_s"] > 0 and not list(scratch.glob("gpu-soak-runs.*"))


@pytest.mark.slow
def test_the_gpu_profile_dry_run_sums_the_step_by_kernel_family_and_names_valid_variants(tmp_path, readme_workdir):
    import re

    out, _ = dry_run("gpu_profile.sh", tmp_path, readme_workdir)
    log = (tmp_path / "out" / "profile_log.txt").read_text()
    assert out.returncode == 0 and [line for line in log.splitlines() if line.startswith("rc=")] == ["rc=0"], log[-3000:]
    record = json.loads(next((tmp_path / "out").glob("step_profile_cpu_*_eager.json")).read_text())
    prof = record["profile"]
    assert record["ours_images_per_s"] > 0 and record["timm_images_per_s"] > 0 and prof["matmul_ms"] > 0
    parts = sum(v for k, v in prof.items() if k.endswith("_ms") and k not in ("busy_ms", "step_ms"))
    assert parts == pytest.approx(prof["busy_ms"], rel=1e-3) and 0 < prof["busy_ms"] <= prof["step_ms"] * 1.05
    # The variants the GPU run will ask for are ones the script accepts (a typo would cost a device call).
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_profile", REPO / "benchmarks" / "step_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    VARIANTS = module.VARIANTS

    script = (REPO / "benchmarks" / "gpu_profile.sh").read_text()
    named = set(re.findall(r"\b(compile|eager|reduce-overhead|max-autotune(?:-no-cudagraphs)?)\b", script))
    assert named and named <= set(VARIANTS) and {"compile", "reduce-overhead", "max-autotune"} <= named


@pytest.mark.slow
def test_the_gpu_speed_dry_run_compares_runs_with_the_bare_step_and_rehearses_cuda_graphs(tmp_path, readme_workdir):
    """benchmarks/gpu_speed.sh on the CPU: every step rc=0; the report sets each fine-tune beside the bare step,
    the resumed run equals the uninterrupted one, the "before" run ran 0.1.0's code and the "graphs" run was
    compiled in torch.compile's reduce-overhead mode (no CUDA graphs on a CPU, the same recipe path)."""
    import shutil

    before = tmp_path / "before"
    archive = subprocess.run(["git", "archive", "45edcd3", "mixer_ft"], cwd=REPO, capture_output=True)
    if archive.returncode:
        pytest.skip("the checkout's history lacks 0.1.0's commit 45edcd3")
    before.mkdir()
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
    env_before = {"GPU_SPEED_BEFORE": str(before)}
    out, scratch = dry_run("gpu_speed.sh", tmp_path, readme_workdir, env_before)
    log = (tmp_path / "out" / "speed_log.txt").read_text()
    assert out.returncode == 0 and set(line for line in log.splitlines() if line.startswith("rc=")) == {"rc=0"}, log[-3000:]
    assert log.count("rc=0") == 8 and log.count("stopped rc=143") == 1
    report = json.loads((tmp_path / "out" / "speed_cpu.json").read_text())
    assert set(report["runs"]) == {"straight", "resumed", "before", "graphs"}
    assert report["resumed_equals_uninterrupted"] is True and report["resumed_max_abs_difference"] == 0
    assert all(ratio > 0 for ratio in report["finetune_over_step"].values()) and report["bare_step_images_per_s"] > 0
    runs = report["runs"]
    assert runs["graphs"]["compiled"] and runs["graphs"]["compile_mode"] == "reduce-overhead"
    # 0.1.0's records have no data_on_device; today's say where the train images were (the CPU: not on a device)
    assert runs["before"]["data_on_device"] is None and runs["straight"]["data_on_device"] is False
    assert all(run["cpu_timeline"] for run in runs.values())  # the watch saw every run
    host = json.loads(next((tmp_path / "out").glob("host_step_cpu_*.json")).read_text())
    assert {"boxes", "optimizer, per tensor (0.1.0)", "optimizer, multi-tensor"} <= set(host["pieces"])
    assert not list(scratch.glob("gpu-speed-runs.*")) and shutil.which("bash")


@pytest.mark.slow
def test_the_gpu_photos_dry_run_fine_tunes_on_photos_decoded_both_ways_beside_the_bare_step(tmp_path, readme_workdir):
    out, scratch = dry_run("gpu_photos.sh", tmp_path, readme_workdir)
    log = (tmp_path / "out" / "photos_log.txt").read_text()
    codes = [line for line in log.splitlines() if line.startswith("rc=")]
    assert len(codes) == 5 and set(codes) == {"rc=0"} and out.returncode == 0, log[-4000:]
    report = json.loads((tmp_path / "out" / "photos_cpu.json").read_text())
    runs = report["runs"]
    assert {r["decode"] for r in runs.values()} == {"host", "device"} and report["bare_step_images_per_s"] > 0
    assert all(r["images_per_s"] > 0 and r["over_bare_step"] > 0 and r["process_cores"] is not None for r in runs.values())
    # The same photos, boxes and weights: on a CPU the two ways train alike (one decoder decodes both)
    host, device = (json.loads((tmp_path / "out" / f"{n}.json").read_text()) for n in ("photos_host", "photos_device"))
    pairs = zip(host["history"]["loss"], device["history"]["loss"], strict=True)
    assert all(abs(a["loss"] - b["loss"]) < 1e-3 for a, b in pairs)
    assert not list(scratch.glob("gpu-photos-runs.*"))  # its set, cache and runs were temporary, and removed
