"""Using a trained model: `mixer-ft predict`, `mixer-ft evaluate`, `mixer-ft push`, the model folder and
`mixer_ft.Classifier`, on the smoke run's real CIFAR-10 model."""

import base64
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from huggingface_hub.repocard import metadata_load
from PIL import Image
from safetensors.torch import save_file

from conftest import REPO, randomize_, run_cli
from mixer_ft import Classifier, create_model, save_pretrained
from mixer_ft.data.images import to_rgb_array


def cli(*args, env=None, cwd=REPO):
    """`mixer-ft ARGS` in this process; with ``env``, in a process of its own (huggingface_hub reads its
    variables at import)."""
    if env is None:
        return run_cli(*args, cwd=cwd)
    return subprocess.run([sys.executable, "-m", "mixer_ft", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cwd)


def ok(*args, **kw):
    out = cli(*args, **kw)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


# --------------------------------------------------------------------------- evaluate and predict


def test_evaluate_gives_the_records_test_and_minival_accuracy_exactly(smoke_run, tmp_path):
    run, rec, data = smoke_run
    test = json.loads(ok("evaluate", run / "model", "--dataset", data, "--json", "--plot", tmp_path / "cm.png"))
    assert (test["accuracy"], test["images"]) == (rec["test_accuracy"], rec["test_images"])
    assert list(test["per_class"]) == rec["classes"] and np.sum(test["confusion"]) == 200
    assert np.trace(test["confusion"]) == round(rec["test_accuracy"] * 200)
    # Each class has 20 test images: its accuracy is its diagonal cell over 20.
    assert [test["per_class"][c] for c in rec["classes"]] == [row[i] / 20 for i, row in enumerate(test["confusion"])]
    assert Image.open(tmp_path / "cm.png").size[0] > 300
    minival = json.loads(ok("evaluate", run, "--dataset", data, "--split", "minival", "--json"))
    assert (minival["accuracy"], minival["images"]) == (rec["minival_accuracy"], rec["minival_images"])


def test_predict_labels_with_class_names_and_agrees_with_evaluate(smoke_run):
    run, rec, data = smoke_run
    lines = ok("predict", run / "model", data / "test", "--json", "--top-k", 3).splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 200 and {r["label"] for r in rows} <= set(rec["classes"])
    for r in rows:
        assert r["label"] == r["top_k"][0]["label"] == rec["classes"][r["index"]] and len(r["top_k"]) == 3
        probs = [t["score"] for t in r["top_k"]]  # the Python API's word (Classifier) and transformers' pipeline's
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    right = np.mean([r["label"] == os.path.basename(os.path.dirname(r["path"])) for r in rows])
    assert right == pytest.approx(rec["test_accuracy"], abs=1e-9)
    # CSV: one row per image and rank; the readable table: one line per image.
    csv_rows = ok("predict", run / "model", data / "test" / "cat", "--csv", "--top-k", 2).splitlines()
    assert csv_rows[0] == "path,rank,label,index,score" and len(csv_rows) == 1 + 2 * 20
    assert len(ok("predict", run / "model", data / "test" / "cat").splitlines()) == 20


def test_a_run_folder_without_its_model_predicts_from_its_newest_checkpoint(smoke_run, tmp_path):
    run, rec, data = smoke_run
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("model"))
    glob = str(data / "test" / "*" / "00*.jpg")
    assert ok("predict", tmp_path / "run", glob, "--json") == ok("predict", run / "model", glob, "--json")


def test_unreadable_inputs_are_skipped_counted_and_named(smoke_run, tmp_path):
    run, _, data = smoke_run
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    shutil.copy(next((data / "test" / "cat").iterdir()), tmp_path / "cat.jpg")
    out = cli("predict", run / "model", tmp_path, "--json")
    assert out.returncode == 0 and [json.loads(x)["path"] for x in out.stdout.splitlines()] == [str(tmp_path / "cat.jpg")]
    assert "skipped 2 of 3" in out.stderr and "empty.png (empty file)" in out.stderr and "text.jpg" in out.stderr


def test_any_pil_image_mode_and_exif_orientation_are_read_upright_in_rgb(tmp_path):
    # A landscape image, red on its left half, stored as a portrait JPEG with EXIF "rotate 90 CW to view".
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:, :30, 0] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 60 high, 40 wide
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    got = to_rgb_array(("rotated.jpg", (tmp_path / "rotated.jpg").read_bytes))
    assert got.shape == (40, 60, 3) and got[:, :25, 0].mean() > 200 and got[:, 35:, 0].mean() < 50
    sixteen = Image.fromarray(np.full((8, 8), 65535, np.uint16))  # a white 16-bit grayscale PNG
    sixteen.save(tmp_path / "16bit.png")
    assert (to_rgb_array(("16bit.png", (tmp_path / "16bit.png").read_bytes)) == 255).all()
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    for mode in ("L", "LA", "P", "RGBA", "CMYK", "I;16"):
        img = rgb.convert(mode) if mode != "I;16" else sixteen
        buf = io.BytesIO()
        img.save(buf, format="TIFF" if mode == "CMYK" else "PNG")
        arr = to_rgb_array((mode, buf.getvalue))
        assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8, mode


def test_the_python_classifier_takes_paths_pil_images_and_arrays(smoke_run):
    run, rec, data = smoke_run
    classify = Classifier.from_pretrained(run, device="cpu")
    files = sorted((data / "test" / "ship").iterdir())[:4]
    by_path = classify(files, top_k=2)
    assert len(by_path) == 4 and all(len(r) == 2 and set(r[0]) == {"label", "index", "score"} for r in by_path)
    pil = [Image.open(f) for f in files]
    arrays = [np.asarray(p.convert("RGB")) for p in pil]
    assert classify(pil, top_k=2) == by_path == classify(arrays, top_k=2)
    assert classify(str(files[0])) == classify(files[0], top_k=5)  # one image: one list
    with pytest.raises(Exception, match="give a path, a PIL image, or a uint8 array"):
        classify(np.zeros((4, 4, 3), np.float32))


def test_google_imagenet_heads_get_imagenet_class_names(tmp_path):
    model = randomize_(create_model("S/32", gelu="exact"))
    with torch.no_grad():
        model.head.bias[281] = 100.0  # whatever the image, class 281 wins
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    image = np.zeros((224, 224, 3), np.uint8)
    assert Classifier.from_pretrained(tmp_path / "w.safetensors", device="cpu")(image)[0]["label"] == "tabby, tabby cat"


@pytest.mark.parametrize("args,needle", [
    (["predict", "{tmp}", "{data}/test/cat"], "holds no weights"),
    (["predict", "{run}/model", "{tmp}/nowhere.jpg"], "No image file or folder"),
    (["predict", "{run}/model", "{tmp}"], "holds no images"),
    (["predict", "{run}/model", "{tmp}/*.png"], "holds no images"),
    (["evaluate", "{run}/model", "--dataset", "{data}", "--split", "val"], "Unknown split 'val'"),
    (["evaluate", "{run}/model", "--dataset", "{other}"], "the model's ['airplane', 'automobile'] are not in it"),
    (["evaluate", "{run}/record.json", "--dataset", "{data}"], "Don't know how to read"),
    (["push", "{tmp}", "me/model"], "is not a model folder"),
])
def test_bad_input_is_one_error_line_and_exit_2(smoke_run, tmp_path, args, needle):
    run, _, data = smoke_run
    other = tmp_path / "other"  # the same images, two classes under other names
    shutil.copytree(data, other)
    for split in ("train", "test"):
        for c in ("airplane", "automobile"):
            (other / split / c).rename(other / split / f"x{c}")
    (tmp_path / "empty").mkdir()
    words = [a.format(tmp=tmp_path / "empty", run=run, data=data, other=other) for a in args]
    out = cli(*words)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    assert needle in out.stderr, out.stderr


# --------------------------------------------------------------------------- the model folder and push


def test_the_model_folder_describes_itself(smoke_run):
    import timm

    run, rec, _ = smoke_run
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["label_names"] == rec["classes"]
    ours = config["mixer_ft"]
    assert ours["config"] == rec["model_config"] and ours["evaluation"] == {"flip": False, "translate": 0,
                                                                            "precision": "no"}
    assert ours["provenance"]["test_accuracy"] == rec["test_accuracy"] and ours["provenance"]["steps"] == 300
    card = metadata_load(run / "model" / "README.md")
    assert card["library_name"] == "transformers" and {"image-classification", "custom_code"} <= set(card["tags"])
    assert {"modeling_mixer_ft.py", "configuration_mixer_ft.py"} <= {p.name for p in (run / "model").iterdir()}
    assert card["model-index"][0]["results"][0]["metrics"][0]["value"] == rec["test_accuracy"]
    text = (run / "model" / "README.md").read_text()
    assert f"{100 * rec['test_accuracy']:.2f}%" in text and "Classifier.from_pretrained" in text
    # A paper variant's folder is also timm's, label names included.
    model = randomize_(create_model("S/32", num_classes=3, img_size=64, gelu="exact"))
    save_pretrained(model, run.parent / "s32", classes=["a", "b", "c"])
    theirs = timm.create_model(f"local-dir:{run.parent / 's32'}", pretrained=True)
    assert list(theirs.pretrained_cfg["label_names"]) == ["a", "b", "c"]
    assert "## In timm" in (run.parent / "s32" / "README.md").read_text()


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """The Hub's HTTP API as `huggingface_hub.upload_folder` speaks it: create the repo, ask how to
    upload (regular, not LFS, for every file), check the card's YAML, receive the commit."""

    repos: dict = {}
    commits: list = []

    def log_message(self, *args):
        pass

    def _reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply(404, {"error": "not here"})

    def do_POST(self):
        import yaml

        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Authorization") != "Bearer hf_test_token":
            return self._reply(401, {"error": "Invalid credentials"})
        if self.path == "/api/repos/create":
            req = json.loads(body)
            self.repos[f"{req['organization']}/{req['name']}"] = req
            return self._reply(200, {"url": f"http://{self.headers['Host']}/{req['organization']}/{req['name']}"})
        if self.path == "/api/validate-yaml":
            yaml.safe_load(json.loads(body)["content"].split("---")[1])
            return self._reply(200, {})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if "/commit/" in self.path:
            lines = [json.loads(x) for x in body.decode().splitlines()]
            self.commits.append({x["value"]["path"]: base64.b64decode(x["value"]["content"])
                                 for x in lines if x["key"] == "file"})
            return self._reply(200, {"commitOid": "a" * 40, "commitUrl": f"http://{self.headers['Host']}/c/{'a' * 40}"})
        self._reply(404, {"error": "not here"})


def test_push_uploads_the_folder_as_it_is_over_the_hub_protocol(smoke_run):
    run, _, _ = smoke_run
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = os.environ.copy()
        del env["HF_HUB_OFFLINE"]
        env |= {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_TOKEN": "hf_test_token"}
        out = cli("push", run, "me/smoke-mixer", "--private", env=env)
        assert out.returncode == 0 and out.stdout.strip().endswith("/c/" + "a" * 40), out.stderr
        assert _FakeHub.repos["me/smoke-mixer"]["visibility"] == "private"
        sent = _FakeHub.commits[-1]
        assert set(sent) == {"model.safetensors", "config.json", "README.md", "preprocessor_config.json",
                             "modeling_mixer_ft.py", "configuration_mixer_ft.py"}  # a custom size: its own code
        assert all(sent[name] == (run / "model" / name).read_bytes() for name in sent)
        refused = cli("push", run, "me/smoke-mixer", env=env | {"HF_TOKEN": "hf_wrong"})
        assert refused.returncode == 2 and "refused" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        server.shutdown()
    offline = cli("push", run, "me/smoke-mixer")  # the suite runs with HF_HUB_OFFLINE=1
    assert offline.returncode == 2 and "HF_HUB_OFFLINE" in offline.stderr
    listed = cli("push", run, "me/smoke-mixer", "--dry-run")
    assert listed.returncode == 0 and [line.split("  (")[0] for line in listed.stdout.splitlines()] == [
        str(run / "model" / n) for n in ("README.md", "config.json", "configuration_mixer_ft.py", "model.safetensors",
                                         "modeling_mixer_ft.py", "preprocessor_config.json")]


@pytest.mark.parametrize("server,needle", [("stalled", "did not finish the push to me/x within 3 s"),
                                           ("closed", "Could not reach the Hugging Face Hub"),
                                           ("bad-id", "is not a Hub repository id")])
def test_push_failures_are_one_line_in_bounded_time(smoke_run, server, needle):
    import socket
    import time

    run, _, _ = smoke_run
    listener = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    port = listener.getsockname()[1]
    if server == "closed":
        listener.close()  # nothing listens there: connection refused
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {
        "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_test_token", "MIXER_FT_PUSH_DEADLINE": "3"}
    t0 = time.perf_counter()
    out = cli("push", run, "me/x" if server != "bad-id" else "me/../x", env=env)
    listener.close()
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and time.perf_counter() - t0 < 60


# --------------------------------------------------------------------------- a model as the next upstream


def test_a_weight_file_or_model_folder_brings_its_own_architecture(smoke_run, tmp_path):
    run, rec, data = smoke_run
    s32 = randomize_(create_model("S/32", img_size=32, gelu="exact"))
    save_file(s32.state_dict(), tmp_path / "s32.safetensors")
    common = ["--dataset", data, "--steps", 2, "--batch", 16, "--warmup", 1, "--eval-every", 0,
              "--set", f'results_dir="{tmp_path / "results"}"']
    ok("finetune", "--upstream", tmp_path / "s32.safetensors", "--output-dir", tmp_path / "a", *common)
    assert json.loads((tmp_path / "a" / "record.json").read_text())["model"] == "S/32"
    # The smoke run's custom Mixer, fine-tuned further: same architecture, same 10 classes, its head kept.
    ok("finetune", "--upstream", run / "model", "--output-dir", tmp_path / "b", "--lr", 1e-9, *common)
    again = json.loads((tmp_path / "b" / "record.json").read_text())
    assert again["model"] == "custom" and again["model_config"] == rec["model_config"]
    assert again["test_accuracy"] == pytest.approx(rec["test_accuracy"], abs=0.02)  # lr ~0: the same model
