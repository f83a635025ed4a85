"""The published numbers beside ours: rows from published.toml, runs from the results folder."""

from __future__ import annotations

import csv
import io
import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mixer_ft.atomic import json_text
from mixer_ft.bounded import read_text
from mixer_ft.data.names import canonical_dataset
from mixer_ft.errors import ConfigError, MixerFtError
from mixer_ft.text import get_logger, md_cell, one_line

log = get_logger(__name__)
FORMATS = ("table", "markdown", "csv", "json")
COLUMNS = ("upstream", "model", "dataset", "published_accuracy", "published_wall_clock_h", "published_hardware",
           "accuracy", "delta_points", "wall_clock_h", "hardware", "device_hours", "runs", "mean_accuracy",
           "min_accuracy")
OTHER_RUNS = "Other runs (no published row, or scored only with test-time views):"
MAX_RECORD_BYTES = 16 << 20  # a record is a few kB; anything this large is not one
_REQUIRED = {"upstream": str, "model": str, "test_accuracy": float, "wall_clock_s": float, "hardware": dict}


@dataclass(frozen=True)
class Published:
    id: str
    upstream: str
    model: str
    dataset: str
    accuracy: float
    recipe: str
    wall_clock_h: float | None = None  # where the source gives it
    hardware: str = "-"

    def matches(self, run: dict[str, Any], protocol: Any) -> bool:
        """Whether ``run`` was made with this row's protocol (its recipe ``protocol``), on its data set."""
        from mixer_ft.train.recipe import protocol_differences

        same_model = self.upstream == "none" or run["model"] == self.model  # any small Mixer from scratch
        return (run["upstream"] == self.upstream and same_model and run["dataset_id"] == self.dataset
                and protocol is not None and isinstance(run.get("config"), dict)
                and not protocol_differences(run["config"], protocol))

    def protocol(self) -> Any:
        """The row's recipe, or None (with a warning) where it cannot be found or read."""
        from mixer_ft.train.recipe import find_recipe, load_recipe

        try:
            return load_recipe(find_recipe(self.recipe))
        except MixerFtError as e:
            log.warning("row %s: no run can be matched to it (%s)", self.id, e)
            return None

    @property
    def command(self) -> str:
        return f"mixer-ft finetune --recipe {self.recipe}"


def default_rows(rows: list[Published]) -> list[Published]:
    """The rows `mixer-ft reproduce` runs when none are named: those whose data set mixer-ft fetches by name
    (CIFAR); a row on other data (ImageNet) runs when named, with --dataset."""
    from mixer_ft.data.sources import HUB_DATASETS

    return [r for r in rows if r.dataset in HUB_DATASETS]


def published_rows() -> list[Published]:
    text = resources.files("mixer_ft.report").joinpath("published.toml").read_text()
    return [Published(**row) for row in tomllib.loads(text)["row"]]


def _fewshot(record: Any) -> bool:
    return isinstance(record, dict) and record.get("kind") == "fewshot"


def _sweep_record(run: Any, path: Path) -> dict[str, Any] | None:
    if not (isinstance(run, dict) and run.get("kind") == "sweep"):
        return None
    if not isinstance(run["chosen"], dict) or not isinstance(run["grid"], dict) or not isinstance(run["name"], str):
        raise TypeError("name, grid and chosen must be text and objects")
    for key in ("minival_accuracy", "test_accuracy"):
        if not isinstance(run[key], (int, float)) or isinstance(run[key], bool) or not math.isfinite(run[key]):
            raise TypeError(f"{key} must be a finite number")
    return run


def sweep_runs(results: str | Path) -> list[dict[str, Any]]:
    """Sweep records (``mixer-ft sweep``) in ``results``, oldest first; malformed ones skipped."""
    return sorted(_read_records(results, _sweep_record, "sweep record"), key=lambda r: str(r.get("finished", "")))


def _section(title: str, head: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    """A titled table of its own under the main one, as markdown or aligned text."""
    if markdown:
        return ["", title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
            ["| " + " | ".join(map(md_cell, row)) + " |" for row in body]
    body = [[one_line(x) for x in row] for row in body]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return ["", title] + ["  ".join(f"{x:<{w}}" for x, w in zip(row, widths)) for row in [head, *body]]


def _sweep_lines(sweeps: list[dict[str, Any]], markdown: bool) -> list[str]:
    """Sweep records as their own table: the grid, the point minival chose, its minival and test accuracy."""
    if not sweeps:
        return []
    head = ["sweep", "grid", "chosen on minival", "minival", "test"]
    body = [[s["name"], ", ".join(f"{k}: {len(v)}" for k, v in s["grid"].items()),
             ", ".join(f"{k}={v}" for k, v in s["chosen"].items()), _pct(s["minival_accuracy"]), _pct(s["test_accuracy"])]
            for s in sweeps]
    title = "Sweeps (each point a run; the choice by minival accuracy only):"
    return _section(title, head, body, markdown)


def _read_records(results: str | Path, check: Callable[[Any, Path], dict[str, Any] | None],
                  what: str) -> list[dict[str, Any]]:
    """The JSON files in ``results`` that ``check`` returns a record for (None passes a file over);
    one it raises on is skipped with a warning naming it."""
    records = []
    for path in sorted(Path(results).glob("*.json")):
        try:
            record = check(json.loads(read_text(path, "record", MAX_RECORD_BYTES)), path)
            if record is not None:
                records.append(record)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError,
                MixerFtError) as e:
            log.warning("skipping %s: not a %s (%s: %s)", path, what, type(e).__name__, str(e)[:200])
    return records


def _run_record(run: Any, path: Path) -> dict[str, Any] | None:
    if _fewshot(run) or isinstance(run, dict) and run.get("kind") == "sweep":
        return None  # listed apart: fewshot_runs, sweep_runs
    if not isinstance(run, dict):
        raise TypeError(f"a {type(run).__name__}, not an object")
    for key, kind in _REQUIRED.items():
        value = run[key]
        if not isinstance(value, (int, float) if kind is float else kind) or isinstance(value, bool):
            raise TypeError(f"{key} is {str(value)[:80]!r}")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"{key} is {value}")
    if not isinstance(run["hardware"].get("count", 1), int) or not isinstance(run["hardware"].get("device", ""), str):
        raise TypeError("hardware count and device must be a number and a name")
    for key in ("dataset", "name"):
        if not isinstance(run.get(key, ""), str):
            raise TypeError(f"{key} is not text")
    if not 0 <= run["test_accuracy"] <= 1:
        raise ValueError(f"test_accuracy {run['test_accuracy']} is not a fraction")
    run["dataset_id"] = canonical_dataset(str(run.get("dataset", "")), run.get("classes") or [],
                                          int(run.get("test_images") or 0))
    run["file"] = str(path)
    run["views"] = views_only(run)
    return run


def views_only(run: dict[str, Any]) -> bool:
    """Whether a record's test_accuracy is its recipe's test-time views' (a record before version 2 of a recipe with
    views, which kept no single-view score), not the image alone's: it ranks for no row, and shows as views'."""
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    has_views = bool(config.get("eval_flip") or config.get("eval_translate"))
    return has_views and int(run.get("record_version") or 1) < 2 and "test_accuracy_views" not in run


def _fewshot_record(run: Any, path: Path) -> dict[str, Any] | None:
    if not _fewshot(run):
        return None
    missing = [k for k in ("model", "dataset", "shots") if k not in run]
    if missing:
        raise KeyError(", ".join(missing))
    if not isinstance(run["model"], str) or not isinstance(run["dataset"], str) or not isinstance(run["shots"], dict):
        raise TypeError("model and dataset must be text, shots an object")
    for shots, result in run["shots"].items():
        if not shots.isdigit() or not all(isinstance(result[k], (int, float)) and not isinstance(result[k], bool)
                                          and math.isfinite(result[k]) for k in ("mean", "std")):
            raise TypeError(f"{shots[:20]}-shot mean and std must be finite numbers")
    return run


def load_runs(results: str | Path) -> list[dict[str, Any]]:
    """Every run record in ``results``; a malformed one is skipped with a warning naming it."""
    return _read_records(results, _run_record, "run record")


def fewshot_runs(results: str | Path) -> list[dict[str, Any]]:
    """Few-shot records (``mixer-ft fewshot``) in ``results``, oldest first; malformed ones skipped."""
    return sorted(_read_records(results, _fewshot_record, "few-shot record"), key=lambda r: str(r.get("finished", "")))


def _fewshot_lines(runs: list[dict[str, Any]], markdown: bool) -> list[str]:
    """Few-shot records as their own table: accuracy mean +- std over seeds per shot count."""
    if not runs:
        return []
    shots = sorted({int(k) for r in runs for k in r["shots"]})
    head = ["upstream", "model", "dataset", "split", "seeds", *(f"{k}-shot" for k in shots)]
    body = [[str(r.get("upstream", "?")), r["model"], r["dataset"], str(r.get("split", "test")), str(r.get("seeds", "?")),
             *(f"{100 * r['shots'][str(k)]['mean']:.2f}% +- {100 * r['shots'][str(k)]['std']:.2f}"
               if str(k) in r["shots"] else "-" for k in shots)] for r in runs]
    title = "Few-shot linear evaluation (frozen features, l2-regularised least squares):"
    return _section(title, head, body, markdown)


def _model(run: dict[str, Any]) -> str:
    """The model as a row names it: variant (or custom) and, where it is not 224, its input size and
    how pretrained weights reached it: "S/32 448px tile", "custom 48px resample"."""
    size = (run.get("model_config") or {}).get("img_size") if isinstance(run.get("model_config"), dict) else None
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    resize = config.get("resize") or (config.get("architecture") or {}).get("resize")
    name = str(run["model"])
    if isinstance(size, int) and (size != 224 or name == "custom" or resize):
        name += f" {size}px" + (f" {resize}" if isinstance(resize, str) else "")
    return name


def _hardware(run: dict[str, Any]) -> str:
    hw = run["hardware"]
    return f"{hw.get('count', 1)}x {hw.get('device', '?')}"


def build(results: str | Path = "results") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, unmatched runs): each published row with our best run of it, and runs matching none."""
    runs, rows, used = load_runs(results), [], set()
    for pub in published_rows():
        protocol = pub.protocol()
        matching = [r for r in runs if pub.matches(r, protocol)]
        mine = [r for r in matching if not r["views"]]  # one meaning: the image alone's accuracy
        used.update(r["file"] for r in mine)
        best = max(mine, key=lambda r: r["test_accuracy"], default=None)
        row = {"id": pub.id, "upstream": pub.upstream, "model": pub.model, "dataset": pub.dataset,
               "published_accuracy": pub.accuracy, "published_wall_clock_h": pub.wall_clock_h,
               "published_hardware": pub.hardware, "accuracy": None, "delta_points": None,
               "wall_clock_h": None, "hardware": None, "device_hours": None, "runs": len(mine),
               "mean_accuracy": None, "min_accuracy": None, "command": pub.command,
               "views_runs": len(matching) - len(mine)}
        if best:
            hours = best["wall_clock_s"] / 3600
            row |= {"accuracy": best["test_accuracy"],
                    "delta_points": round(100 * (best["test_accuracy"] - pub.accuracy), 2),
                    "wall_clock_h": round(hours, 3), "hardware": _hardware(best),
                    "device_hours": round(hours * best["hardware"].get("count", 1), 3), "record": best["file"],
                    # The best run alone hides the spread over seeds; these show it.
                    "mean_accuracy": sum(r["test_accuracy"] for r in mine) / len(mine),
                    "min_accuracy": min(r["test_accuracy"] for r in mine)}
        rows.append(row)
    other = [{"upstream": r["upstream"], "model": _model(r), "dataset": r["dataset_id"],
              "accuracy": r["test_accuracy"], "wall_clock_h": round(r["wall_clock_s"] / 3600, 3),
              "hardware": _hardware(r), "record": r["file"], "views": r["views"]} for r in runs if r["file"] not in used]
    return rows, other


def _finite(value: Any) -> Any:
    """``value`` with every non-finite number as None: strict JSON has no NaN or Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:g}{unit}"


def _cell(value: Any) -> Any:
    """A CSV cell on one line that a spreadsheet will not run: text starting like a formula gets a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        value = "'" + value
    return one_line(value) if isinstance(value, str) else value


FEWSHOT_COLUMNS = ("split", "seeds", "shots", "shot_mean", "shot_std")


def _csv(rows: list[dict[str, Any]], other: list[dict[str, Any]], fewshot: list[dict[str, Any]],
         sweeps: list[dict[str, Any]]) -> str:
    """Every section in one CSV: published rows, other runs, a row per few-shot count, a row per sweep."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["kind", *COLUMNS, *FEWSHOT_COLUMNS])
    for r in rows:
        writer.writerow(["published", *("" if r[k] is None else _cell(r[k]) for k in COLUMNS)])
    for r in other:  # one run each: it is its own mean and lowest
        cells = r | {"runs": 1, "mean_accuracy": r["accuracy"], "min_accuracy": r["accuracy"]}
        writer.writerow(["other", *(_cell(cells.get(k, "")) for k in COLUMNS)])
    for r in fewshot:
        for shots, result in sorted(r["shots"].items(), key=lambda kv: int(kv[0])):
            cells = {"upstream": r.get("upstream", ""), "model": r["model"], "dataset": r["dataset"],
                     "split": r.get("split", "test"), "seeds": r.get("seeds", ""), "shots": int(shots),
                     "shot_mean": result["mean"], "shot_std": result["std"]}
            writer.writerow(["fewshot", *(_cell(cells.get(k, "")) for k in (*COLUMNS, *FEWSHOT_COLUMNS))])
    for sw in sweeps:  # the chosen point: its test accuracy under "accuracy", its minival under the mean
        base = sw.get("base") if isinstance(sw.get("base"), dict) else {}
        cells = {"upstream": base.get("upstream", ""), "model": base.get("model") or "", "dataset": base.get("dataset", ""),
                 "accuracy": sw["test_accuracy"], "mean_accuracy": sw["minival_accuracy"]}
        writer.writerow(["sweep", *(_cell(cells.get(k, "")) for k in (*COLUMNS, *FEWSHOT_COLUMNS))])
    return buf.getvalue()


_HEAD = ["upstream", "model", "dataset", "published", "time", "hardware", "ours", "diff", "time", "hardware",
         "device-h"]


def _cells(rows: list[dict[str, Any]], other: list[dict[str, Any]]) -> tuple[list, list[str], list]:
    """(row cells, notes under the table, other runs' cells) for the text and markdown tables."""
    body = []
    for r in rows:
        diff = "-" if r["delta_points"] is None else f"{r['delta_points']:+.2f} pt"
        body.append([r["upstream"], r["model"], r["dataset"], _pct(r["published_accuracy"]),
                     _num(r["published_wall_clock_h"], " h"), r["published_hardware"], _pct(r["accuracy"]), diff,
                     _num(r["wall_clock_h"], " h"), r["hardware"] or "-", _num(r["device_hours"])])
    notes = [f"no run yet for {r['id']}: {r['command']}" if not r.get("views_runs") else
             f"{r['id']}: its {r['views_runs']} run(s) below were scored only with test-time views (records before "
             f"version 2), which a row does not compare; a run of today's scores both: {r['command']}"
             for r in rows if r["accuracy"] is None]
    notes += [f"{r['id']}: best of {r['runs']} runs shown ({Path(r['record']).name}); mean {_pct(r['mean_accuracy'])}, "
              f"lowest {_pct(r['min_accuracy'])}" for r in rows if r["runs"] > 1]
    # The record's file tells two runs of one model and data apart (a user's beside the shipped ones, say).
    extra = [[r["upstream"], r["model"], r["dataset"], _pct(r["accuracy"]) + (" (with test-time views)" if r["views"] else ""),
              _num(r["wall_clock_h"], " h"), r["hardware"], Path(r["record"]).name] for r in other]
    return body, notes, extra


def _markdown(body: list, notes: list[str], extra: list) -> list[str]:
    lines = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += ["| " + " | ".join(map(md_cell, row)) + " |" for row in body]
    lines += [""] + [f"- {md_cell(m)}" for m in notes]
    if extra:
        lines += ["", OTHER_RUNS, "", "| upstream | model | dataset | accuracy | time | hardware | record |",
                  "|---|---|---|---|---|---|---|"] + ["| " + " | ".join(map(md_cell, e)) + " |" for e in extra]
    return lines


def _text(body: list, notes: list[str], extra: list) -> list[str]:
    body, extra = [[one_line(x) for x in row] for row in body], [[one_line(x) for x in row] for row in extra]
    notes = [one_line(n) for n in notes]
    widths = [max(len(str(x)) for x in col) for col in zip(_HEAD, *body)]
    fmt_row = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt_row.format(*_HEAD), fmt_row.format(*("-" * w for w in widths))]
    lines += [fmt_row.format(*row) for row in body]
    lines += [""] + notes
    if extra:
        ew = [max(len(str(x)) for x in col) for col in zip(*extra)]
        lines += ["", OTHER_RUNS] + ["  ".join(f"{x:<{w}}" for x, w in zip(e, ew)) for e in extra]
    return lines


def render(rows: list[dict[str, Any]], other: list[dict[str, Any]], fmt: str = "table",
           fewshot: list[dict[str, Any]] | None = None, sweeps: list[dict[str, Any]] | None = None) -> str:
    """The table in one of FORMATS; few-shot and sweep records (if any) follow, apart from the rows."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    if fmt == "json":
        doc = {"rows": [{k: r[k] for k in COLUMNS} for r in rows], "other_runs": other}
        doc |= ({"fewshot": fewshot} if fewshot else {}) | ({"sweeps": sweeps} if sweeps else {})
        return json_text(_finite(doc), indent=2)
    if fmt == "csv":
        return _csv(rows, other, fewshot or [], sweeps or [])
    lines = (_markdown if fmt == "markdown" else _text)(*_cells(rows, other))
    lines += _fewshot_lines(fewshot or [], fmt == "markdown") + _sweep_lines(sweeps or [], fmt == "markdown")
    return "\n".join(lines).rstrip() + "\n"


def plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Published and reproduced accuracy, and wall-clock, side by side, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'mixer_ft[plot]'.") from None
    labels = [f"{r['upstream']}\n{r['model']}\n{r['dataset']}" for r in rows]
    x = range(len(rows))
    fig, (acc_ax, time_ax) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    for ax, pub_key, our_key, ylabel, scale in ((acc_ax, "published_accuracy", "accuracy", "test accuracy (%)", 100),
                                                 (time_ax, "published_wall_clock_h", "wall_clock_h", "wall-clock (hours)", 1)):
        pub = [float("nan") if r[pub_key] is None else r[pub_key] * scale for r in rows]  # nan: not published
        ours = [(r[our_key] or 0) * scale for r in rows]
        ax.bar([i - 0.2 for i in x], pub, width=0.4, label="published", color="#7f7f7f")
        bars = ax.bar([i + 0.2 for i in x], ours, width=0.4, label="mixer_ft (best run)", color="#1f77b4")
        for bar, r in zip(bars, rows):
            centre = bar.get_x() + bar.get_width() / 2
            if r[our_key] is None:
                ax.annotate("no run", (centre, 0), ha="center", va="bottom", fontsize=8, rotation=90)
            else:
                ax.annotate(f"{r[our_key] * scale:.3g}", (centre, bar.get_height()), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.2 * max(pub + ours))
        ax.legend(loc="upper center", ncol=2)
        ax.grid(axis="y", alpha=0.3)
    acc_ax.set_title("CIFAR transfer accuracy")
    time_ax.set_title("Wall-clock (published on 4x V100; ours on the hardware in each record)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
