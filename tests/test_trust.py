"""What a run publishes, deletes, caches and reads from its environment (issue 43), each held in one place:
published files hold no token, password or file from outside the data (mixer_ft/publish.py); class names have one
parser (data/class_names.py); only files a run's manifest lists are deleted (atomic.Manifest); the data cache heals
and stays bounded (data/cache_entries.py); every environment variable has one typed reader (settings.py); a lost
share of the data past max_data_loss stops a run (data/loss.py)."""

import ast
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_invariants import TINY, jpeg, one_error_line, photo_folder
from test_shards import CLASSES, images_of, write_shards

from conftest import REPO, run_cli
from mixer_ft.data.class_names import parse_class_list
from mixer_ft.errors import ConfigError, DataError
from mixer_ft.settings import SETTINGS, hf_flag, setting

PACKAGE = REPO / "mixer_ft"


def finetune(tmp_path, dataset, name, *extra, steps=2, env=None, cwd=REPO):
    folder = [] if "--output-dir" in extra else ["--output-dir", tmp_path / "runs" / name]
    return run_cli("finetune", "--dataset", dataset, "--steps", steps, "--batch", 8, "--warmup", 0, "--eval-every", 0,
                   "--set", f'results_dir="{tmp_path / "results"}"', "--set", f'name="{name}"', "--mixed-precision", "no",
                   *folder, *TINY, *extra, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def shards(cifar_subset, tmp_path_factory):
    cut, folder = cifar_subset(train=6, test=2), tmp_path_factory.mktemp("wds") / "shards"
    write_shards(folder, "train", images_of(cut, "train"), per_shard=20)
    write_shards(folder, "test", images_of(cut, "test"), per_shard=20)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return folder


def serve(folder):
    """``folder`` over loopback HTTP (queries ignored, as a signed URL's are by a static server)."""
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"127.0.0.1:{httpd.server_address[1]}"


# --------------------------------------------------------------------------- what a run publishes


def test_no_published_file_holds_a_urls_token_or_password(shards, tmp_path):
    """Shards streamed from a URL with a password and a signed query: the model folder (everything push would
    send), the record in results/ and the run folder's copy are scanned for both; neither is there."""
    from mixer_ft.weights.push import files_to_push

    httpd, host = serve(shards)
    try:
        url = f"http://reader:PASSWORD-8123@{host}/{{train-{{00000..00002}},test-00000}}.tar?X-Token=TOKEN-4711&sig=a"
        out = finetune(tmp_path, url, "signed", "--output-dir", tmp_path / "run", "--set", "val_fraction=0", steps=3)
    finally:
        httpd.shutdown()
    assert out.returncode == 0, out.stderr[-2000:]
    published = [*files_to_push(tmp_path / "run" / "model"), tmp_path / "results" / "signed.json",
                 tmp_path / "run" / "record.json"]
    assert len(published) >= 5
    for path in published:
        text = path.read_bytes().decode("utf-8", "replace")
        assert "PASSWORD-8123" not in text and "TOKEN-4711" not in text and "reader:" not in text, path
    record = json.loads((tmp_path / "results" / "signed.json").read_text())
    assert record["data_source"] == f"http://{host}/{{train-{{00000..00002}},test-00000}}.tar"
    assert "PASSWORD" not in out.stdout + out.stderr and "TOKEN" not in out.stdout + out.stderr  # nor printed


def test_a_class_list_that_leads_outside_the_data_folder_is_refused_and_never_read(shards, tmp_path):
    secret = tmp_path / "elsewhere" / "secrets.txt"
    secret.parent.mkdir()
    secret.write_text("SECRET-CLASS-1\nSECRET-CLASS-2\n")
    linked = tmp_path / "linked"
    shutil.copytree(shards, linked)
    (linked / "classes.txt").unlink()
    (linked / "classes.txt").symlink_to(secret)
    out = run_cli("data", linked)
    assert "leads outside" in one_error_line(out) and "SECRET-CLASS" not in out.stdout + out.stderr
    (linked / "classes.txt").unlink()
    (linked / "classes.txt").symlink_to(linked / "train-00000.tar")  # a link that stays inside: it is the file
    assert "leads outside" not in run_cli("data", linked).stderr


# --------------------------------------------------------------------------- class names


@pytest.mark.parametrize("text,expect", [
    ("\ufeffcat\r\ndog\r\n", ["cat", "dog"]),  # a byte-order mark and Windows line ends
    ("cat\rdog", ["cat", "dog"]),
    ("cat\ndog\n\n\n", ["cat", "dog"]),  # blank lines at the end shift nothing
    ("cat\n\ndog\n", "a blank line (line 2) before a class name"),
    ("cat\ndog\ncat\n", "names a class twice ('cat')"),
    ("cafe\u0301\ncaf\u00e9\n", "names a class twice"),  # one name, NFD and NFC
    ("<!DOCTYPE html>\n<html><body>Sign in</body></html>\n", "is markup"),
    ("cat\n<div>dog</div>\n", "is markup"),
    ("", "names no class"),
    ("x" * 300 + "\n", "longer than 256 characters"),
])
def test_a_class_list_is_parsed_by_one_set_of_rules(text, expect):
    if isinstance(expect, list):
        assert parse_class_list(text, "classes.txt") == expect
    else:
        with pytest.raises(DataError, match=expect.replace("(", r"\(").replace(")", r"\)")):
            parse_class_list(text, "classes.txt")


def test_a_sign_in_page_served_as_the_class_list_is_refused(shards, tmp_path):
    page = tmp_path / "page"
    shutil.copytree(shards, page)
    (page / "classes.txt").write_text("<html><head><title>Sign in</title></head></html>")
    httpd, host = serve(page)
    try:
        line = one_error_line(finetune(tmp_path, f"http://{host}/{{train-00000,test-00000}}.tar", "page"))
    finally:
        httpd.shutdown()
    assert "is markup" in line


def test_a_model_trained_on_numbered_classes_is_not_scored_on_named_ones(shards, cifar_subset, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(shards, bare)
    (bare / "classes.txt").unlink()  # the classes are then "0".."9"
    assert finetune(tmp_path, bare, "numbered", "--output-dir", tmp_path / "run").returncode == 0
    line = one_error_line(run_cli("evaluate", tmp_path / "run", "--dataset", cifar_subset(train=6, test=2)))
    assert "numbered 0..9" in line and "airplane" in line
    assert run_cli("evaluate", tmp_path / "run", "--dataset", bare).returncode == 0


# --------------------------------------------------------------------------- deleting only what a run wrote


def test_fresh_deletes_only_the_files_a_run_wrote(tmp_path):
    data = photo_folder(tmp_path / "photos", per_class=6)
    theirs = tmp_path / "theirs"  # not a run folder: someone's model/ and checkpoints/
    for rel in ("model/model.safetensors", "model/config.json", "checkpoints/step_00000001.pt"):
        (theirs / rel).parent.mkdir(parents=True, exist_ok=True)
        (theirs / rel).write_text("mine")
    line = one_error_line(finetune(tmp_path, data, "a", "--output-dir", theirs, "--fresh"))
    assert "not a run folder" in line
    assert all((theirs / rel).read_text() == "mine" for rel in ("model/model.safetensors", "model/config.json",
                                                                "checkpoints/step_00000001.pt"))
    run = tmp_path / "run"
    assert finetune(tmp_path, data, "b", "--output-dir", run).returncode == 0
    notes, kept = run / "model" / "notes.md", run / "checkpoints" / "step_00000099.pt"
    notes.write_text("my notes")
    kept.write_text("a checkpoint I copied here")
    assert finetune(tmp_path, data, "b", "--output-dir", run, "--fresh").returncode == 0
    assert notes.read_text() == "my notes" and kept.read_text() == "a checkpoint I copied here"
    listed = json.loads((run / ".mixer-ft-files.json").read_text())["files"]
    assert "model/model.safetensors" in listed and "checkpoints/step_00000002.pt" in listed
    assert "model/notes.md" not in listed and "checkpoints/step_00000099.pt" not in listed


# --------------------------------------------------------------------------- the data cache


def sized_photos(root: Path, n: int = 4) -> Path:
    """Photos of several sizes (the compact store keeps them encoded)."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for i in range(n):
            (root / c).mkdir(parents=True, exist_ok=True)
            h, w = 90 + 7 * i, 120 - 5 * i
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    return root


DAMAGE = {
    "meta-garbage": lambda e: (e / "meta.json").write_text("{not json"),
    "meta-keys": lambda e: (e / "meta.json").write_text(json.dumps({"format": 9})),
    "other-format": lambda e: (e / "meta.json").write_text(json.dumps({**json.loads((e / "meta.json").read_text()),
                                                                        "format": 7})),
    "labels-cut": lambda e: (e / "train_labels.npy").write_bytes((e / "train_labels.npy").read_bytes()[:90]),
    "shapes-gone": lambda e: (e / "test_shapes.npy").unlink(),
    "images-cut": lambda e: [p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]) for p in e.glob("train.*")
                             if p.suffix in (".u8", ".enc")],
    "offsets-gone": lambda e: [p.unlink() for p in e.glob("train_offsets.npy")] or (e / "train.u8").exists() and
    (e / "train.u8").write_bytes(b""),
}


@pytest.mark.parametrize("store", ["decoded", "compact"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_cache_entry_damaged_between_runs_is_built_again_with_one_line(tmp_path, store, damage):
    data = photo_folder(tmp_path / "photos") if store == "decoded" else sized_photos(tmp_path / "photos")
    env = {"MIXER_FT_CACHE": str(tmp_path / "cache")}
    first = run_cli("data", data, "--json", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    (entry,) = [p for p in (tmp_path / "cache" / "data").iterdir() if not p.name.startswith(".")]
    assert json.loads((entry / "meta.json").read_text())["store"] == ("raw" if store == "decoded" else "encoded")
    DAMAGE[damage](entry)
    again = run_cli("data", data, "--json", env=env)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert again.stderr.count("is damaged") == 1 and "building it again" in again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert run_cli("data", data, env=env).stderr.count("is damaged") == 0  # healed


def test_the_cache_evicts_an_older_version_of_a_source_and_the_least_recently_used_past_its_bound(tmp_path):
    from mixer_ft.data.cache_entries import entries

    cache = tmp_path / "cache"
    env = {"MIXER_FT_CACHE": str(cache)}
    photos = photo_folder(tmp_path / "photos")
    assert run_cli("data", photos, env=env).returncode == 0
    jpeg(photos / "cat" / "new.jpg", seed=99)  # a new version of the same folder
    out = run_cli("data", photos, env=env)
    assert "the entry of an older version of" in out.stderr
    os.environ["MIXER_FT_CACHE"] = str(cache)
    assert len(entries()) == 1
    other = photo_folder(tmp_path / "other", classes=("a", "b"))
    size = entries()[0]["bytes"]
    out = run_cli("data", other, env={**env, "MIXER_FT_CACHE_MAX": str(size + 10)})  # room for one entry
    assert out.returncode == 0 and "past MIXER_FT_CACHE_MAX" in out.stderr
    (left,) = entries()
    assert left["source"].endswith("other")
    listed = run_cli("cache", env=env)
    assert left["key"] in listed.stdout and "1 entry" in listed.stdout
    assert json.loads(run_cli("cache", "--json", env=env).stdout)[0]["key"] == left["key"]
    assert "No data cache entry nope" in one_error_line(run_cli("cache", "clean", "nope", env=env))
    cleaned = run_cli("cache", "clean", env=env)
    assert cleaned.returncode == 0 and "removed 1 entry" in cleaned.stdout and entries() == []


# --------------------------------------------------------------------------- settings, recipes and names


BAD = {"seconds": "soon", "whole": "many", "count": "-1", "size": "lots", "flag": "maybe", "folder": "~nosuchuser_zz/x",
       "url": "ftp://mirror", "parse": "compact"}


@pytest.mark.parametrize("name", sorted(n for n, s in SETTINGS.items() if s.parse is not hf_flag))
def test_every_environment_variable_with_a_bad_value_is_one_line_naming_it(name, monkeypatch):
    monkeypatch.setenv(name, BAD[SETTINGS[name].parse.__name__])
    with pytest.raises(ConfigError, match=f"The environment variable {name}="):
        setting(name)
    monkeypatch.setenv(name, "")
    assert setting(name) == SETTINGS[name].default  # empty is unset


def test_a_bad_environment_variable_is_one_line_on_the_command_line(tmp_path):
    data = photo_folder(tmp_path / "photos")
    line = one_error_line(run_cli("data", data, env={"MIXER_FT_WORKERS": "many"}))
    assert "MIXER_FT_WORKERS='many' is not a whole number" in line
    line = one_error_line(run_cli("push", tmp_path, "me/x", env={"MIXER_FT_PUSH_DEADLINE": "soon"}))
    assert "not a model folder" in line  # the folder is refused first; with one, the deadline's value
    line = one_error_line(run_cli("data", data, env={"MIXER_FT_CACHE": "~nosuchuser_zz/cache"}))
    assert "MIXER_FT_CACHE" in line and "names no home folder" in line


def test_nothing_but_settings_reads_the_environment():
    """Each read of a variable (os.environ.get, os.environ[...], os.getenv, `in os.environ`) is in settings.py."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = ast.unparse(node) if isinstance(node, (ast.Call, ast.Subscript, ast.Compare)) else ""
            reads = (isinstance(node, ast.Call) and text.startswith(("os.environ.get(", "os.getenv("))) or \
                (isinstance(node, ast.Subscript) and text.startswith("os.environ[") and isinstance(node.ctx, ast.Load)) or \
                (isinstance(node, ast.Compare) and "in os.environ" in text)
            if reads:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {text}")
    assert not found, found


def test_a_home_folder_in_a_recipes_folders_is_the_home_folder_and_a_recipe_may_open_with_a_bom(tmp_path):
    from mixer_ft.train.recipe import Recipe, load_recipe

    home = Path.home()
    assert Recipe(output_dir="~/runs/a", results_dir="~").output_dir == str(home / "runs" / "a")
    with pytest.raises(ConfigError, match="names no home folder"):
        Recipe(output_dir="~nosuchuser_zz/runs")
    recipe = tmp_path / "r.toml"
    recipe.write_bytes("\ufeffsteps = 7\n".encode())  # as Windows Notepad saves it
    assert load_recipe(recipe).steps == 7
    run = run_cli("finetune", "--recipe", recipe, "--output-dir", "~/runs/x", "--dry-run", cwd=tmp_path)
    assert run.returncode == 0 and f'output_dir = "{home / "runs" / "x"}"' in run.stdout, run.stdout
    assert not (tmp_path / "~").exists()


def test_a_file_named_with_terminal_escapes_is_printed_escaped(tmp_path):
    data = photo_folder(tmp_path / "photos")
    (data / "cat" / "\x1b[2J\x1b[31mred.jpg").write_bytes(b"not an image")
    out = run_cli("data", data)
    assert out.returncode == 0 and "\x1b" not in out.stderr + out.stdout and "\\x1b[2J\\x1b[31mred.jpg" in out.stderr
    line = one_error_line(run_cli("data", tmp_path / "\x1b[31mnowhere/"))
    assert "\x1b" not in line and "\\x1b[31mnowhere" in line


# --------------------------------------------------------------------------- a share lost, past max_data_loss


def test_a_run_whose_data_lost_more_than_max_data_loss_stops_naming_it_and_records_what_it_lost(shards, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(shards, cut)
    shard = cut / "train-00001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # about 10 of 60 training samples lost
    line = one_error_line(finetune(tmp_path, cut, "stopped"))
    assert "train-00001.tar" in line and "max_data_loss (5.0%)" in line and "--set max_data_loss=" in line
    out = finetune(tmp_path, cut, "allowed", "--set", "max_data_loss=0.25")
    assert out.returncode == 0, out.stderr[-2000:]
    lost = json.loads((tmp_path / "results" / "allowed.json").read_text())["data_loss"]
    assert lost["sources"][0]["source"].endswith("train-00001.tar") and lost["sources"][0]["why"].startswith("cut short")
    assert 0.1 < lost["fraction"] < 0.25 and lost["samples_lost"] >= 9


def test_a_photo_folders_few_broken_photos_are_counted_as_a_share_of_its_photos_and_the_run_goes_on(tmp_path):
    data = photo_folder(tmp_path / "photos", per_class=10)
    (data / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not a whole jpeg")
    lost = json.loads(run_cli("data", data, "--json").stdout)["data_loss"]
    assert lost["samples_read"] == 21 and lost["samples_lost"] == 1 and lost["fraction"] == round(1 / 21, 6)
    assert finetune(tmp_path, data, "photos").returncode == 0  # 4.8%, within the default 5%


def test_a_streamed_run_past_max_data_loss_stops_and_within_it_records_every_processs_loss(shards, tmp_path, monkeypatch):
    from mixer_ft.data import stream

    monkeypatch.setattr(stream, "JUDGE_AFTER", 30)
    cut = tmp_path / "cut"
    shutil.copytree(shards, cut)
    shard = cut / "train-00001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    line = one_error_line(finetune(tmp_path, cut, "s1", "--streaming", "--set", "val_fraction=0", steps=8))
    assert "train-00001.tar" in line and "max_data_loss" in line
    out = finetune(tmp_path, cut, "s2", "--streaming", "--set", "val_fraction=0", "--set", "max_data_loss=0.5", steps=8)
    assert out.returncode == 0, out.stderr[-2000:]
    lost = json.loads((tmp_path / "results" / "s2.json").read_text())["data_loss"]
    assert any(s["source"].endswith("train-00001.tar") for s in lost["sources"]) and lost["fraction"] > 0


# --------------------------------------------------------------------------- one reader of bytes


# Reads of files outside mixer_ft/bounded.py, each with why it is not a source to bound: a new one fails here.
NOT_SOURCES = {
    ("atomic.py", "open"): "reopens a file it has just written, to fsync it",
    ("atomic.py", "self.path.read_text"): "the run folder's manifest, which this tool wrote",
    ("data/cache_entries.py", "(folder / 'meta.json').read_text"): "a cache entry's index, which this tool wrote",
    ("data/encoded.py", "open"): "a cache entry's names, which this tool wrote",
    ("data/folder.py", "zipfile.ZipFile"): "an image-folder archive through the gate; zip checks each member's CRC",
    ("weights/google_npz.py", "zipfile.ZipFile"): "a weight file through the gate; zip checks each member's CRC",
    ("launch.py", "statuses[0].read_text"): "the status a child process of `mixer-ft launch` wrote",
    ("launch.py", "os.read"): "the child processes' stderr pipe, forwarded as it comes",
    ("report/bench.py", "Path(f'{tmp}/results/bench.json').read_text"): "the record the bench's own run wrote",
    ("report/table.py", "resources.files('mixer_ft.report').joinpath('published.toml').read_text"): "package data",
    ("weights/model_folder.py", "(HERE / name).read_text"): "the package's own remote-code files",
    ("weights/sources.py", "Path(hf_hub_download(repo_id, 'config.json', revision=revision or None)).read_text"):
        "a config.json huggingface_hub downloaded into its cache",
    ("train/checkpoints.py", "open"): "digests a checkpoint this run wrote",
    ("train/checkpoints.py", "sidecar.read_text"): "a checkpoint's digest, which this run wrote",
    ("train/records.py", "metadata.distribution('mixer_ft').read_text"): "pip's record of this package",
    ("train/hardware.py", "Path('/proc/cpuinfo').read_text"): "the kernel's description of this machine",
    ("train/hardware.py", "Path(path).read_text"): "the kernel's cgroup limits",
    ("train/hardware.py", "Path('/sys/fs/cgroup/cpu.max').read_text"): "the kernel's CPU quota for this container",
    ("train/hardware.py", "Path('/proc/self/status').read_text"): "the kernel's account of this process",
    ("train/hardware.py", "Path('/proc/meminfo').read_text"): "the kernel's account of memory",
}
_READS = ("read_bytes", "read_text", "urlopen")  # as methods: bare read_text is bounded.read_text


def test_every_byte_source_is_read_through_the_bounded_reader():
    """Every file the package opens to read (open, read_text/read_bytes, zip, tar, urlopen) outside bounded.py is a
    file it wrote itself, the kernel's, the package's own or a gated archive with checksums, each named above."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        if rel == "bounded.py" or "remote_code" in rel:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            mode = ast.unparse(node.args[1]) if name == "open" and len(node.args) > 1 else "'r'"
            if (name == "open" and "w" not in mode and "a" not in mode) or name in ("os.read", "zipfile.ZipFile") \
                    or name.endswith(("tarfile.open", "urlopen")) or ("." in name and name.rsplit(".", 1)[-1] in _READS):
                found.add((rel, name))
    assert found == set(NOT_SOURCES), (sorted(found - set(NOT_SOURCES)), sorted(set(NOT_SOURCES) - found))
