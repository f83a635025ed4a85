"""Generated image-folder layouts, as folders, zips and tars: nested folders, OS litter, links, odd names,
special files, empty and corrupt images. Whatever the layout, `mixer-ft data` ends in exit 0 with every
usable image labelled by its class folder (or named in a warning), or in one `error:` line and exit 2;
no traceback; nothing outside the data and cache folders written; the data folder left as it was.

The example count is small here (the quick selection); `.ci/run` raises it with MIXER_FT_LAYOUT_EXAMPLES.
"""

import io
import json
import os
import tarfile
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import run_cli
from mixer_ft.data.folder import LITTER

EXAMPLES = int(os.environ.get("MIXER_FT_LAYOUT_EXAMPLES", "25"))
_JPEG = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(_JPEG, format="JPEG")
JPEG = _JPEG.getvalue()

# Class folder names: letters from several scripts, spaces, punctuation a shell or a table dislikes, a decomposed
# accent; never "/", NUL, a leading "." or an OS litter name (those are never classes, by the rules).
name_chars = st.sampled_from(list("abcXYZ019 _-|#&'()[]é") + ["e\u0301", "\u00df", "\u65e5", "\n", "\t"])
class_names = st.lists(name_chars, min_size=1, max_size=12).map("".join).filter(
    lambda n: not n.startswith(".") and n.strip() and n.casefold() not in LITTER and len(n.encode()) < 200)
extras = st.sampled_from(["litter", "corrupt", "empty", "text", "nested", "link_in", "link_out", "fifo"])


@st.composite
def layouts(draw):
    classes = draw(st.lists(class_names, min_size=1, max_size=3, unique=True))
    top = draw(st.sampled_from(["", "pets", "My Photos"]))
    files = {}  # relative path -> ("jpeg" | "bytes" | "link_in" | "link_out" | "fifo", payload)
    for c in classes:
        for k in range(5):  # enough that each class has a test image
            files[f"{c}/{k}.jpg"] = ("jpeg", JPEG)
        for j, extra in enumerate(draw(st.lists(extras, max_size=4))):
            name = f"{c}/x{j}"
            if extra == "litter":
                files[draw(st.sampled_from([f"__MACOSX/{c}/._{j}.jpg", f"{c}/._{j}.jpg", f"{c}/.DS_Store",
                                           f"{c}/Thumbs.db", f".hidden/{j}.jpg", f"{c}/.git/{j}.jpg"]))] = ("bytes", b"\0")
            elif extra == "corrupt":
                files[name + ".jpg"] = ("bytes", JPEG[: len(JPEG) // 3])
            elif extra == "empty":
                files[name + ".png"] = ("bytes", b"")
            elif extra == "text":
                files[name + ".txt"] = ("bytes", b"notes")
            elif extra == "nested":
                files[f"{c}/sub dir/deeper/{j}.jpg"] = ("jpeg", JPEG)
            else:
                files[name + ".jpg"] = (extra, f"{c}/0.jpg")
    container = draw(st.sampled_from(["folder", "zip", "tar"]))
    return classes, top, files, container


def build(root: Path, outside: Path, layout) -> tuple[Path, dict]:
    """Make the layout under root (in an archive where it says); the expected counts by the rules."""
    classes, top, files, container = layout
    base = root / "data" / top if top else root / "data"
    expect = {"images": 0, "skipped": 0, "named": []}
    for rel, (kind, payload) in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        litter = any(p.startswith(".") or p.casefold() in LITTER for p in Path(rel).parts)
        if kind in ("jpeg", "bytes"):
            path.write_bytes(payload)
            is_image = path.suffix in (".jpg", ".png") and not litter
            expect["images"] += is_image and kind == "jpeg"
            expect["skipped"] += is_image and kind == "bytes"
        elif kind == "link_in":
            path.symlink_to(base / payload)
            expect["images"] += container != "tar"  # zip stores the file it points to; tar stores the link
            expect["named"] += [rel] if container == "tar" else []
        elif kind == "link_out":
            target = outside / rel.replace("/", "_")
            target.write_bytes(JPEG)
            path.symlink_to(target)
            expect["images"] += container == "zip"  # zip takes the file's bytes: it is then the user's image
            expect["named"] += [rel] if container != "zip" else []
        elif kind == "fifo":
            os.mkfifo(path)
            expect["named"] += [rel] if container in ("folder", "tar") else []  # tar stores it; zip leaves it out
    if container == "folder":
        return root / "data", expect
    archive = root / f"data.{container}"
    if container == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for p in sorted((root / "data").rglob("*")):
                if p.is_file() and not p.is_symlink() or p.is_symlink() and p.exists():
                    zf.write(p, str(p.relative_to(root / "data")))
    else:
        with tarfile.open(archive, "w") as tar:
            tar.add(root / "data", "", recursive=True)
    return archive, expect


def snapshot(folder: Path) -> dict[str, tuple]:
    return {str(p): (p.is_symlink(), os.lstat(p).st_size) for p in sorted(folder.rglob("*"))}


def twins(classes: list[str]) -> bool:
    folded = [unicodedata.normalize("NFC", c).casefold() for c in classes]
    return len(set(folded)) < len(folded)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
@given(layout=layouts())
def test_any_generated_layout_is_labelled_by_its_class_folders_or_refused_in_one_line(tmp_path_factory, layout):
    root, outside = tmp_path_factory.mktemp("layout"), tmp_path_factory.mktemp("outside")
    source, expect = build(root, outside, layout)
    before, around = snapshot(root), snapshot(outside)
    cache = tmp_path_factory.mktemp("cache")
    out = run_cli("data", source, "--json", env={"MIXER_FT_CACHE": str(cache)})
    assert "Traceback" not in out.stderr and out.returncode in (0, 2), out.stderr[-2000:]
    assert snapshot(root) == before and snapshot(outside) == around  # nothing written or deleted but the cache
    classes = layout[0]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    if twins(classes):
        assert out.returncode == 2 and len(errors) == 1 and "differ only by case or Unicode normalisation" in errors[0]
        return
    if len(classes) == 1:  # one class folder reads as the folder every image shares (an archive's top folder):
        # its own images are then outside any class folder (named in a warning), or there is nothing to train on
        assert (out.returncode == 2 and len(errors) == 1) or "outside the class folders are not used" in out.stderr
        return
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout)
    shown = [unicodedata.normalize("NFC", c) for c in classes]
    printable = [c.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for c in shown]
    assert sorted(info["classes"]) == sorted(printable)  # the class folders, NFC: litter and the top folder are not
    assert sum(info["splits"].values()) == expect["images"] and info["skipped"] == expect["skipped"], (info, expect)
    # Each file not used is named in a warning (of a long list, the first five, and the count).
    named = [rel for rel in expect["named"] if Path(rel).name in out.stderr]
    assert named == expect["named"] or ("in all)" in out.stderr and len(named) >= 5), (expect["named"], out.stderr)
