"""Data sources end to end on real CIFAR-10 images cut from ../shared/data/cifar10-jpeg.tar.gz."""

import io
import json
import pathlib
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CIFAR_TGZ, REPO, run_cli
from mixer_ft.data.cache import load_data
from mixer_ft.errors import DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = {"train": 25, "test": 5}



@pytest.fixture(scope="session")
def cifar_cut(cifar_subset):
    """A few hundred real CIFAR-10 JPEGs in the image-folder layout: 250 train, 50 test."""
    return cifar_subset(**PER_CLASS)


def rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_image_folder(cifar_cut):
    data = load_data(str(cifar_cut))
    assert data.classes == CLASSES and data.image_size == (32, 32)
    assert isinstance(data.images["train"], np.memmap)  # on disk, not materialised in RAM
    assert data.images["train"].dtype == np.uint8 and data.images["train"].shape == (250, 32, 32, 3)
    assert data.labels["test"].dtype == np.int64 and sorted(set(data.labels["test"])) == list(range(10))
    splits = data.splits()
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 245, "minival": 5, "test": 50}
    first = sorted((cifar_cut / "test" / "airplane").iterdir())[0]  # sorted walk: the first test image
    assert np.array_equal(data.images["test"][0], rgb(first)) and data.labels["test"][0] == 0


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_folder_archive_equals_folder(cifar_cut, tmp_path, mode):
    archive = tmp_path / ("cut.tar" if mode == "w" else "cut.tar.gz")
    with tarfile.open(archive, mode) as tar:
        tar.add(cifar_cut, arcname="cifar10")  # a top-level folder, as archives often have
    a, b = load_data(str(archive)), load_data(str(cifar_cut))
    assert a.classes == b.classes
    for s in ("train", "test"):
        assert np.array_equal(a.images[s], b.images[s]) and np.array_equal(a.labels[s], b.labels[s])


def test_splits_are_deterministic_per_seed(cifar_cut):
    data = load_data(str(cifar_cut))
    a, b, c = data.splits(0.1, seed=1), data.splits(0.1, seed=1), data.splits(0.1, seed=2)
    assert np.array_equal(a["minival"][1], b["minival"][1])
    assert not np.array_equal(a["minival"][1], c["minival"][1])
    assert not set(a["minival"][1]) & set(a["train"][1]) and len(a["minival"][1]) == 25
    assert len(set(data.labels["train"][a["minival"][1]])) > 3  # shuffled, not the last class only


def write_cifar_python(path, images, labels, classes, cifar100=False, evil=None):
    """An archive in the published python-version layout (protocol-2 pickles with byte keys)."""
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R, G, B planes per row
    top = "cifar-100-python" if cifar100 else "cifar-10-batches-py"
    label_key = b"fine_labels" if cifar100 else b"labels"
    n_test = len(images) // 6
    if cifar100:
        batches = {"train": (flat[n_test:], labels[n_test:]), "test": (flat[:n_test], labels[:n_test])}
        meta = ("meta", {b"fine_label_names": [c.encode() for c in classes], b"coarse_label_names": [b"x"]})
    else:
        parts = np.array_split(np.arange(n_test, len(images)), 5)
        batches = {f"data_batch_{i + 1}": (flat[p], labels[p]) for i, p in enumerate(parts)}
        batches["test_batch"] = (flat[:n_test], labels[:n_test])
        meta = ("batches.meta", {b"label_names": [c.encode() for c in classes], b"num_vis": 3072})
    with tarfile.open(path, "w:gz") as tar:
        def add(name, obj):
            blob = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        for name, (x, y) in batches.items():
            add(name, evil if evil and name.startswith(("data_batch_1", "train")) else
                {b"batch_label": name.encode(), label_key: [int(v) for v in y], b"data": x})
        add(*meta)
    return n_test


@pytest.mark.parametrize("cifar100", [False, True])
def test_cifar_python_archive(cifar_cut, tmp_path, cifar100):
    folder = load_data(str(cifar_cut))
    images, labels = np.asarray(folder.images["train"]), folder.labels["train"]
    name = "cifar-100-python.tar.gz" if cifar100 else "cifar-10-python.tar.gz"
    n_test = write_cifar_python(tmp_path / name, images, labels, CLASSES, cifar100)
    data = load_data(str(tmp_path / name))
    assert data.classes == CLASSES
    assert len(data.labels["train"]) == 250 - n_test and len(data.labels["test"]) == n_test
    assert np.array_equal(data.images["test"], images[:n_test])  # channel planes -> HWC, exactly
    assert np.array_equal(data.images["train"], images[n_test:]) and np.array_equal(data.labels["train"], labels[n_test:])


class _Payload:
    def __init__(self, where):
        self.where = where

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.where), "owned"))


def test_tampered_cifar_archive_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned.txt"
    imgs = np.zeros((12, 32, 32, 3), np.uint8)
    evil = pickle.dumps({b"data": imgs.reshape(12, -1), b"labels": [0] * 12, b"x": _Payload(target)}, protocol=2)
    write_cifar_python(tmp_path / "cifar-10-python.tar.gz", imgs, np.zeros(12, int), CLASSES, evil=evil)
    with pytest.raises(DataError, match="could run code"):
        load_data(str(tmp_path / "cifar-10-python.tar.gz"))
    assert not target.exists()


def make_hf_folder(root, cifar_cut, image_col="img", label_col="label", label_kind="classlabel"):
    """A local data set in the Hub's parquet layout, written with `datasets` itself."""
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as HFImage

    label_feature = {"classlabel": ClassLabel(names=CLASSES), "int": Value("int64"), "str": Value("string")}[label_kind]
    feats = Features({image_col: HFImage(), label_col: label_feature})
    for split in ("train", "test"):
        files = sorted((cifar_cut / split).rglob("*.jpg"))
        labels = [CLASSES.index(f.parent.name) for f in files]
        if label_kind == "str":
            labels = [CLASSES[i] for i in labels]
        ds = Dataset.from_dict({image_col: [str(f) for f in files], label_col: labels}, features=feats)
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def test_hub_layout_through_datasets(cifar_cut, tmp_path):
    root = make_hf_folder(tmp_path / "cifar10_hf", cifar_cut)
    data = load_data(f"hf:{root}")
    assert data.classes == CLASSES and data.location == f"hf:{root}"
    ref = load_data(str(cifar_cut))
    assert np.array_equal(data.images["train"], ref.images["train"]) and np.array_equal(data.labels["test"], ref.labels["test"])


def test_hub_columns_named_by_the_user_and_bad_label_columns(cifar_cut, tmp_path):
    root = make_hf_folder(tmp_path / "odd", cifar_cut, "picture", "target", label_kind="int")
    data = load_data(f"hf:{root}", image_column="picture", label_column="target")
    assert len(data.classes) == 10 and data.images["test"].shape == (50, 32, 32, 3)
    root = make_hf_folder(tmp_path / "strings", cifar_cut, label_kind="str")
    with pytest.raises(DataError, match="not an integer or class label"):
        load_data(f"hf:{root}")


def test_corrupt_images_are_skipped_and_counted(cifar_cut, tmp_path, caplog):
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(cifar_cut, root)
    (root / "train" / "cat" / "not_an_image.jpg").write_text("hello")
    good = sorted((root / "train" / "dog").iterdir())[0].read_bytes()
    (root / "train" / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    data = load_data(str(root))
    assert data.skipped == 2 and len(data.labels["train"]) == 250
    assert "skipped 2 image(s)" in caplog.text and "not_an_image.jpg" in caplog.text


def test_folder_without_images(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="has no train images.*train/<class>/<image>"):
        load_data(str(tmp_path))


def test_cifar10_offline_says_what_to_download_and_where():
    with pytest.raises(DataError) as e:
        load_data("cifar10")
    msg = str(e.value)
    assert "datasets.load_dataset('uoft-cs/cifar10')" in msg and "HF_DATASETS_CACHE" in msg
    assert "cifar-10-python.tar.gz" in msg


def data_cli(*args):
    return run_cli("data", *args)


@pytest.mark.slow
def test_data_command_on_the_whole_cifar10_archive():
    out = data_cli(str(CIFAR_TGZ), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["splits"] == {"train": 49_000, "minival": 1_000, "test": 10_000}
    assert info["classes"] == CLASSES and info["image_size"] == [32, 32] and info["skipped"] == 0
    text = data_cli(str(CIFAR_TGZ)).stdout
    assert "minival     1,000 images" in text and "airplane automobile bird" in text


@pytest.mark.parametrize("args,needle", [
    (["/no/such/folder"], "No data set /no/such/folder: no such file or folder"),
    (["cifar100"], "cifar-100-python.tar.gz"),
])
def test_data_command_bad_input(args, needle):
    out = data_cli(*args)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr


def _photo(path, w, h, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def _photos(root, layout):
    """Small JPEGs of mixed sizes and orientations: {split folder or "": {class: count}}."""
    k = 0
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (48, 36) if k % 2 else (36, 48)  # landscape and portrait
                _photo(root / split / cls / f"{i:03d}.jpg", w, h, k)
                k += 1
    return root


def data_json(*args):
    out = run_cli("data", *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("val", ["val", "validation"])
def test_train_and_val_folders_report_on_val(tmp_path, val):
    root = _photos(tmp_path / "photos", {"train": {"cat": 6, "dog": 4}, val: {"cat": 2, "dog": 3}})
    info = data_json(root)
    assert info["classes"] == ["cat", "dog"] and info["splits"]["test"] == 5
    assert info["splits"]["train"] + info["splits"]["minival"] == 10 and "validation folder" in info["test_from"]


def test_train_val_and_test_folders_report_on_test(tmp_path):
    root = _photos(tmp_path / "photos", {"train": {"a": 5}, "validation": {"a": 2}, "test": {"a": 3}})
    info = data_json(root)
    assert info["splits"]["test"] == 3 and info["test_from"].startswith("its test/ folder")


def test_a_plain_class_folder_gets_a_seeded_stratified_test_split(tmp_path):
    import zipfile

    root = _photos(tmp_path / "photos", {"": {"cat": 10, "dog": 5, "owl": 20}})
    info = data_json(root)
    assert info["classes"] == ["cat", "dog", "owl"] and info["splits"]["test"] == 2 + 1 + 4
    assert "held out" in info["test_from"]
    tenth = data_json(root, "--test-fraction", 0.1)
    assert tenth["splits"]["test"] == 1 + 0 + 2  # round(0.5) is 0: Python rounds half to even
    data = load_data(str(root))
    again = load_data(str(root))
    assert np.array_equal(data.labels["test"], again.labels["test"]) and sorted(set(data.labels["test"])) == [0, 1, 2]
    # The same folder zipped (with a top folder, as archives often have) gives the same split.
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as zf:
        for f in sorted(root.rglob("*.jpg")):
            zf.write(f, f"photos/{f.relative_to(root)}")
    zipped = load_data(str(tmp_path / "photos.zip"))
    assert np.array_equal(zipped.labels["test"], data.labels["test"])


def test_a_train_folder_without_anything_to_report_on_is_refused(tmp_path):
    root = _photos(tmp_path / "photos", {"train": {"cat": 2}})
    with pytest.raises(DataError, match="no test/, val/ or validation/ folder"):
        load_data(str(root))


def _portrait_marker(h=600, w=400):
    """An upright portrait whose content shows orientation and aspect: the top third red, the rest blue."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 3, :, 0] = 255
    img[h // 3:, :, 2] = 255
    return img


@pytest.fixture(scope="module")
def phone_photos(tmp_path_factory):
    """train/ + val/ of JPEGs as phones make them: 12-MP landscape, 12-MP portrait stored sideways with
    an EXIF rotation, small ones of both orientations, and the portrait marker (also sideways + EXIF)."""
    root = tmp_path_factory.mktemp("phone") / "photos"
    rng = np.random.default_rng(0)

    def save(path, array, rotate=False):
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(array)
        exif = Image.Exif()
        if rotate:  # stored turned a quarter to the left; EXIF 6 says "turn right to view"
            img = img.transpose(Image.Transpose.ROTATE_90)
            exif[0x0112] = 6
        img.save(path, quality=85, exif=exif)

    smooth = np.kron(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), np.ones((126, 126, 1), np.uint8))
    save(root / "train" / "cat" / "big_landscape.jpg", smooth)  # 3024 x 4032
    save(root / "train" / "dog" / "big_portrait.jpg", smooth.transpose(1, 0, 2).copy(), rotate=True)
    for i in range(4):
        for cls in ("cat", "dog"):
            shape = (200, 300, 3) if i % 2 else (300, 200, 3)
            save(root / ("train" if i < 3 else "val") / cls / f"small{i}.jpg", rng.integers(0, 255, shape, dtype=np.uint8))
    save(root / "val" / "cat" / "marker.jpg", _portrait_marker(), rotate=True)
    return root


def test_phone_photos_are_cached_bounded_upright_and_in_their_own_aspect(phone_photos):
    info = data_json(phone_photos)
    assert info["classes"] == ["cat", "dog"] and info["splits"]["test"] == 3 and not info["one_size"]
    assert info["splits"]["train"] + info["splits"]["minival"] == 8
    data = load_data(str(phone_photos))
    for split in ("train", "test"):
        shapes = data.extents[split]
        assert shapes.max() <= 512  # each image's longer side, so at most 3 x 512 x 512 bytes
        stored = len(np.asarray(data.images[split].flat))  # kept encoded: never more than decoded would take
        assert stored <= (shapes[:, 0] * shapes[:, 1] * 3).sum() <= len(shapes) * 3 * 512 * 512
    train_shapes = {tuple(s) for s in data.extents["train"]}
    assert (384, 512) in train_shapes and (512, 384) in train_shapes  # 12-MP landscape, and portrait turned upright
    # The marker, scored as evaluation sees it: upright (red on top) and in its own aspect, as a
    # direct resize of the upright original gives it, not squashed into another photo's shape.
    from mixer_ft.data.preprocess import Preprocess

    test = data.extents["test"]
    k = [i for i, (h, w) in enumerate(test) if (h, w) == (512, 341)]
    assert len(k) == 1, test
    x = data.images["test"][np.array(k)]
    out = Preprocess(48, mean=(0, 0, 0), std=(1, 1, 1)).eval(torch.from_numpy(x), torch.from_numpy(test[k]))[0]
    expect = np.asarray(Image.fromarray(_portrait_marker()).resize((48, 48), Image.BILINEAR), np.float32) / 255
    assert np.abs(out.permute(1, 2, 0).numpy() - expect).mean() < 0.05
    assert out[0, :12].mean() > 0.9 and out[2, 20:].mean() > 0.9  # red on top, blue below


def test_the_same_photos_as_plain_class_folders_and_a_smoke_run_on_them(phone_photos, tmp_path):
    plain = tmp_path / "plain"
    for f in phone_photos.rglob("*.jpg"):
        (plain / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, plain / f.parent.name / f"{f.parent.parent.name}_{f.name}")
    info = data_json(plain)
    assert info["classes"] == ["cat", "dog"] and info["splits"]["test"] == 1 + 1  # 20% of 6 and of 5, rounded
    out = run_cli("finetune", "--recipe", "recipes/smoke.toml", "--dataset", phone_photos, "--steps", "3", "--batch", "4",
                  "--eval-every", "0", "--output-dir", tmp_path / "run", "--set", f'results_dir="{tmp_path / "results"}"',
                  cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads((tmp_path / "results" / "smoke_cifar10.json").read_text())
    assert rec["test_images"] == 3 and rec["steps"] == 3


def test_the_class_is_the_first_folder_and_sub_folders_belong_to_it(tmp_path):
    # Plain: cat/2019/*, dog/2019/*, dog/2020/* are two classes, not "2019" and "2020" with cats and dogs merged.
    root = _photos(tmp_path / "plain", {"cat/2019": {"": 5}, "dog/2019": {"": 3}, "dog/2020": {"": 4}})
    info = data_json(root, "--test-fraction", "0.25")
    assert info["classes"] == ["cat", "dog"]
    assert {c: info["class_counts"]["train"][c] + info["class_counts"]["minival"][c] + info["class_counts"]["test"][c]
            for c in info["classes"]} == {"cat": 5, "dog": 7}
    # Splits: train/cat/more/* belongs to cat, not dropped; an archive's top folder is not a class.
    split = _photos(tmp_path / "top" / "photos", {"train/cat": {"": 3}, "train/cat/more": {"": 2}, "train/dog": {"": 4},
                                                   "test/cat": {"": 2}, "test/dog": {"": 2}})
    info = data_json(split.parent)
    assert info["classes"] == ["cat", "dog"] and info["splits"]["train"] + info["splits"]["minival"] == 9
    assert info["class_counts"]["test"] == {"cat": 2, "dog": 2}


def test_class_folders_that_differ_only_by_case_are_refused_naming_both(tmp_path):
    root = _photos(tmp_path / "p", {"": {"Cat": 3, "cat": 3, "dog": 3}})
    out = run_cli("data", root)
    assert out.returncode == 2 and "'Cat' and 'cat'" in out.stderr and "Traceback" not in out.stderr
