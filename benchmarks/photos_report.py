"""Summarise the GPU photos check (benchmarks/gpu_photos.sh) into one record: photos_<device>.json.

    python benchmarks/photos_report.py --records OUT --out OUT

For each fine-tune on the generated photos ("photos_host": decoded by PIL in the feed's threads; "photos_device":
decode = "device"), its steady images/s (the run record's: the steps after the first) and that over the bare
compiled step's (`mixer-ft bench`, same model and batch), with the CPU its watch saw (the training process's
median use, in cores: its decode threads included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixer_ft.atomic import atomic_write_text, json_text  # noqa: E402
from mixer_ft.report.bench import device_slug  # noqa: E402

RUNS = ("photos_host", "photos_device")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    benches = [json.loads(p.read_text()) for p in sorted(args.records.glob("*.json"))]
    benches = [b for b in benches if "ours_images_per_s" in b]
    if len(benches) != 1:
        sys.exit(f"error: expected one `mixer-ft bench` record in {args.records}, found {len(benches)}")
    bench = benches[0]
    record = {"kind": "photos", "device": bench["device"], "model": bench["model"], "batch": bench["batch"],
              "bare_step_images_per_s": bench["ours_images_per_s"], "runs": {}}
    for name in RUNS:
        path = args.records / f"{name}.json"
        if not path.is_file():
            sys.exit(f"error: no record {path}: did the run fail? (see the log)")
        run = json.loads(path.read_text())
        watch = args.records / f"watch_{name}.json"
        cores = None
        if watch.is_file():
            samples = json.loads(watch.read_text())["samples"]
            cores = round(statistics.median(s["main"] for s in samples) / 100, 2) if samples else None
        record["runs"][name] = {"decode": run["config"].get("decode", "host"), "images_per_s": run["images_per_s"],
                                "over_bare_step": round(run["images_per_s"] / bench["ours_images_per_s"], 3),
                                "process_cores": cores}
    path = atomic_write_text(args.out / f"photos_{device_slug(bench['device'])}.json", json_text(record, indent=2) + "\n")
    runs = record["runs"]
    print(f"{path}: host {runs['photos_host']['over_bare_step']}x the bare step, device "
          f"{runs['photos_device']['over_bare_step']}x")


if __name__ == "__main__":
    main()
