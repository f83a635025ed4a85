"""Run a command and record, twice a second, what uses the CPU in its process tree.

    python benchmarks/cpu_watch.py --out watch.json -- python -m mixer_ft finetune ...

For the slow start after a warm compile cache (the GPU issue): which processes run beside the training
loop in the first seconds of a run, and how much CPU they take. Each sample holds the time (Unix
seconds, to line up with a run record's windows), the CPU of the command's own process (percent of one
core), of torch.compile's worker processes (their command line names inductor's compile_worker) and of
any other child, the number of each, and the whole machine's use (percent of all cores). SIGINT and
SIGTERM are passed on to the command; its exit status is this script's.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def kind(proc) -> str:  # noqa: ANN001 - a psutil.Process
    try:
        line = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone, or not ours to read
        return "other"
    return "compile workers" if "compile_worker" in line else "other"


def watch(pid: int, every: float, samples: list[dict], done: threading.Event) -> None:
    import psutil

    main = psutil.Process(pid)
    known: dict[int, psutil.Process] = {}
    main.cpu_percent(None)
    psutil.cpu_percent(None)
    while not done.wait(every):
        try:
            children = main.children(recursive=True)
            row = {"t": round(time.time(), 2), "main": main.cpu_percent(None), "machine": psutil.cpu_percent(None)}
        except psutil.Error:
            return
        by: dict[str, list[float]] = {"compile workers": [], "other": []}
        for child in children:
            proc = known.setdefault(child.pid, child)
            try:
                share = proc.cpu_percent(None)
            except psutil.Error:
                continue
            by[kind(proc)].append(share)
        for name, shares in by.items():
            key = name.replace(" ", "_")
            row[key], row[f"{key}_n"] = round(sum(shares), 1), len(shares)
        samples.append(row)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--every", type=float, default=0.5)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command after --")
    proc = subprocess.Popen(command)
    for signum in (signal.SIGINT, signal.SIGTERM):  # a stop asked of the watch is asked of the command
        signal.signal(signum, lambda s, _f: proc.send_signal(s))
    samples: list[dict] = []
    done = threading.Event()
    thread = threading.Thread(target=watch, args=(proc.pid, args.every, samples, done), daemon=True)
    started = time.time()
    thread.start()
    rc = proc.wait()
    done.set()
    thread.join()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "started": round(started, 2), "rc": rc, "samples": samples},
                                   indent=1) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
