"""Threads on a CPU, quiet and shared: how many intra-op threads, and how they wait, in one run.

Run:  python benchmarks/threads.py [--seconds 6] [--repeats 3] [--out results/bench]

Each setting runs in a process of its own (OpenMP reads its settings when it starts): the smoke recipe's model
(recipes/smoke.toml's architecture, batch 64) and a mid-sized one (S/32 at 64 px, batch 32), trained on random
data; the figure is images/s over --seconds after 3 warm-up steps, the median of --repeats passes. Settings:
torch's default threads (one per core, OpenMP's default wait: libgomp spins 300,000 times before it sleeps), the
same with OMP_WAIT_POLICY=PASSIVE (a waiting thread sleeps at once), with GOMP_SPINCOUNT=10000 and 1000 (a shorter
spin), and one thread. Conditions: quiet, then with one busy process per core (a machine shared with other work:
the other process holds a core while our threads wait for each other). The record goes to --out as
threads_cpu.json; docs/finetune.md ("Threads") is written from it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixer_ft.atomic import atomic_write_text, json_text  # noqa: E402
from mixer_ft.train.hardware import cpu_name  # noqa: E402

MODELS = {"smoke": dict(patch_size=4, hidden_dim=64, num_blocks=2, tokens_mlp_dim=32, channels_mlp_dim=128, img_size=32,
                        batch=64),
          "S/32 64px": dict(patch_size=32, hidden_dim=512, num_blocks=8, tokens_mlp_dim=256, channels_mlp_dim=2048,
                            img_size=64, batch=32)}
SETTINGS = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin 10k": {"GOMP_SPINCOUNT": "10000"},
            "spin 1k": {"GOMP_SPINCOUNT": "1000"}, "one thread": {"OMP_NUM_THREADS": "1"}}

CHILD = r"""
import json, sys, time, torch
import torch.nn.functional as F
from mixer_ft.model.mixer import MixerConfig, MlpMixer
arch, seconds = json.loads(sys.argv[1]), float(sys.argv[2])
batch = arch.pop("batch")
model = MlpMixer(MixerConfig(num_classes=10, gelu="exact", **arch)).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.randn(batch, 3, arch["img_size"], arch["img_size"]), torch.randint(0, 10, (batch,))
def step():
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(3):
    step()
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    step()
    n += 1
print(json.dumps({"images_per_s": n * batch / (time.perf_counter() - t0), "threads": torch.get_num_threads()}))
"""


def _spin(stop: float) -> None:
    while time.time() < stop:
        pass


def measure(arch: dict, env: dict[str, str], seconds: float) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(arch), str(seconds)], capture_output=True, text=True,
                         env={**{k: v for k, v in os.environ.items()
                                 if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
                              **env, "PYTHONPATH": str(ROOT)}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3, help="passes over every setting (the median is shown)")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows = []
    for condition in ("quiet", "busy"):
        for model, arch in MODELS.items():
            for setting, env in SETTINGS.items():
                rates = []
                for _ in range(args.repeats):
                    load = []
                    if condition == "busy":  # one spinning process per core, for as long as the measurement
                        stop = time.time() + args.seconds + 30
                        load = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(cores)]
                        for p in load:
                            p.start()
                    try:
                        got = measure(dict(arch), env, args.seconds)
                    finally:
                        for p in load:
                            p.terminate()
                    rates.append(round(got["images_per_s"], 1))
                rows.append({"condition": condition, "model": model, "setting": setting, "threads": got["threads"],
                             "images_per_s": statistics.median(rates), "each": rates})
                print(f"{condition:<5} {model:<10} {setting:<10} {got['threads']} thread(s)  "
                      f"{statistics.median(rates):8,.0f} img/s  ({', '.join(f'{r:,.0f}' for r in rates)})", flush=True)
    record = {"cpu": cpu_name(), "cores": cores, "seconds": args.seconds, "repeats": args.repeats, "settings": SETTINGS,
              "rows": rows,
              "date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/threads.py"}
    path = Path(args.out) / "threads_cpu.json"
    atomic_write_text(path, json_text(record, indent=2) + "\n")
    print(f"record: {path}")


if __name__ == "__main__":
    main()
