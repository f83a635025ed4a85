"""Weights from the Hub (a local cache built here), timm, Google URLs (a loopback server),
local state dicts and folders; strict loading; unsafe and damaged files refused."""

import base64
import hashlib
import http.server
import json
import pathlib
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_weights_npz import flax_mixer_params

from conftest import randomize_
from mixer_ft import CheckpointError, ConfigError, WeightsUnavailable, create_model, load_checkpoint, save_pretrained
from mixer_ft.weights.downloads import cached_path
from mixer_ft.weights.sources import upstream_sources


def small_model(seed=0, **kw):
    return randomize_(create_model("S/32", gelu="exact", **kw), seed=seed)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


# --------------------------------------------------------------------------- the Hub and timm


def test_hub_timm_and_upstream_name_read_the_same_cached_file(hub_cache, tmp_path):
    # The smallest Mixer timm publishes is B/16; its Hub repo is timm/mixer_b16_224.goog_in21k_ft_in1k.
    src = randomize_(create_model("B/16", gelu="exact"), seed=5)
    save_file(src.state_dict(), tmp_path / "model.safetensors")
    config = {"architecture": "mixer_b16_224", "num_classes": 1000,
              "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": [3, 224, 224]}}
    hub_cache("timm/mixer_b16_224.goog_in21k_ft_in1k",
              {"model.safetensors": tmp_path / "model.safetensors", "config.json": json.dumps(config).encode()})

    via_hub = create_model(pretrained="hf-hub:timm/mixer_b16_224.goog_in21k_ft_in1k")
    via_timm = create_model(pretrained="timm:mixer_b16_224.goog_in21k_ft_in1k")
    via_upstream = create_model("B/16", pretrained="in1k")  # timm's tag holds Google's in1k weights
    for m in (via_hub, via_timm, via_upstream):
        assert_same_weights(m, src)
        assert m.config.variant == "B/16" and m.config.gelu == "tanh"  # Google's Flax-trained weights
    assert via_hub.config.num_classes == 1000


def test_hub_miss_while_offline_says_what_to_fetch_and_where():
    with pytest.raises(WeightsUnavailable) as e:
        load_checkpoint("hf-hub:timm/mixer_l16_224.goog_in21k")
    msg = str(e.value)
    assert "HF_HUB_OFFLINE=1" in msg and "hf download timm/mixer_l16_224.goog_in21k" in msg
    assert "models--timm--mixer_l16_224.goog_in21k" in msg


def test_upstream_miss_lists_every_place_with_its_cache_path():
    with pytest.raises(WeightsUnavailable) as e:
        create_model("L/16", pretrained="in21k")
    msg = str(e.value)
    assert "hf-hub:timm/mixer_l16_224.goog_in21k:" in msg
    assert "https://storage.googleapis.com/mixer_models/imagenet21k/Mixer-L_16.npz" in msg
    assert str(cached_path("https://storage.googleapis.com/mixer_models/imagenet21k/Mixer-L_16.npz")) in msg


def test_upstream_names_resolve_in_order():
    assert upstream_sources("in21k", "mixer_l16_224") == [
        "hf-hub:timm/mixer_l16_224.goog_in21k",
        "https://storage.googleapis.com/mixer_models/imagenet21k/Mixer-L_16.npz",
    ]
    assert upstream_sources("in1k", "B_16")[0] == "hf-hub:timm/mixer_b16_224.goog_in21k_ft_in1k"
    with pytest.raises(Exception, match="B/16 and L/16 only"):
        upstream_sources("in21k", "S/32")


# --------------------------------------------------------------------------- Google URLs


class _Server:
    """A loopback HTTP server standing in for Google Cloud Storage."""

    def __init__(self):
        self.files, self.md5_override, self.cut = {}, None, False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                md5 = outer.md5_override or base64.b64encode(hashlib.md5(data).digest()).decode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-goog-hash", f"crc32c=AAAAAA==,md5={md5}")
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if outer.cut else data)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")  # our downloads on; the Hub itself stays offline (read at import)
    server = _Server()
    params = flax_mixer_params(np.random.default_rng(0), 16, 32, 2, 16, 64, 64, 5)
    np.savez(tmp_path / "m.npz", **params)
    server.files["/mixer_models/imagenet21k/Mixer-B_16.npz"] = (tmp_path / "m.npz").read_bytes()
    yield server
    server.httpd.shutdown()


def test_url_download_is_checked_and_cached(gcs):
    url = gcs.url + "/mixer_models/imagenet21k/Mixer-B_16.npz"
    model = create_model(pretrained=url)
    assert model.config.num_tokens == 16 and model.config.gelu == "tanh"
    dest = cached_path(url)
    assert dest.read_bytes() == gcs.files["/mixer_models/imagenet21k/Mixer-B_16.npz"]
    gcs.files.clear()  # a second load is served from the cache
    assert_same_weights(create_model(pretrained=url), model)


@pytest.mark.parametrize("damage", ["cut", "md5"])
def test_interrupted_or_corrupt_download_never_lands_in_the_cache(gcs, damage):
    url = gcs.url + "/mixer_models/imagenet21k/Mixer-B_16.npz"
    gcs.cut, gcs.md5_override = damage == "cut", (damage == "md5" and "AAAAAAAAAAAAAAAAAAAAAA==") or None
    with pytest.raises((WeightsUnavailable, CheckpointError), match=r"cut short: [0-9,]+ of its [0-9,]+ bytes arrived|MD5"):
        load_checkpoint(url)
    dest = cached_path(url)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file left behind


def test_upstream_falls_back_from_the_hub_to_google(gcs, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # Hub unreachable
    monkeypatch.setenv("MIXER_FT_GOOGLE_BASE_URL", gcs.url + "/mixer_models")
    ckpt = load_checkpoint("in21k", variant="B/16")  # the Hub copy is not cached: Google's file it is
    assert ckpt.source == gcs.url + "/mixer_models/imagenet21k/Mixer-B_16.npz" and ckpt.gelu == "tanh"


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_url_or_googles_copy_needs_its_own_host_not_the_hub(gcs, monkeypatch, tmp_path):
    """A machine that cannot reach the Hub may reach a mirror or Google's bucket: a run on a URL (or on in21k, whose
    Google copy is the fallback) starts when that host answers, and names that host when it does not."""
    from mixer_ft.train import preflight

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")  # the Hub: nobody there
    monkeypatch.setenv("MIXER_FT_GOOGLE_BASE_URL", gcs.url + "/mixer_models")
    data = tmp_path / "photos"
    for split in ("train", "test"):
        (data / split / "a").mkdir(parents=True)
        Image.new("RGB", (40, 30)).save(data / split / "a" / "0.jpg")
    preflight.check(gcs.url + "/mixer_models/imagenet21k/Mixer-B_16.npz", None, str(data))
    preflight.check("in21k", "B/16", str(data))
    gone = f"http://127.0.0.1:{closed_port()}/w.npz"
    with pytest.raises(WeightsUnavailable, match=f"127.0.0.1:{gone.split(':')[2].split('/')[0]} cannot be reached now"):
        preflight.check(gone, None, str(data))


def test_offline_url_miss_says_where_to_put_the_file():
    url = "https://storage.googleapis.com/mixer_models/imagenet1k/Mixer-B_16.npz"
    with pytest.raises(WeightsUnavailable, match=f"Fetch {url} .* put it at {cached_path(url)}"):
        load_checkpoint(url)


# --------------------------------------------------------------------------- local files


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "bin"])
def test_local_state_dict_files(tmp_path, fmt):
    src = small_model()
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file(src.state_dict(), path)
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    model = create_model(pretrained=str(path))
    assert_same_weights(model, src)
    assert model.config.gelu == "exact"  # a bare PyTorch state dict gets timm's GELU
    assert all(p.requires_grad for p in model.parameters())


def test_saved_folder_round_trips_through_us_and_timm(tmp_path):
    import timm

    src = small_model(num_classes=10, img_size=64)
    save_pretrained(src, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    back = create_model(pretrained=str(tmp_path / "out"))
    assert back.config == src.config
    assert_same_weights(back, src)
    theirs = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (theirs(x) - src.eval()(x)).abs().max() <= 1e-5


def test_head_is_replaced_only_when_asked(tmp_path):
    src = small_model()
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    same = create_model("S/32", pretrained=str(tmp_path / "w.safetensors"), num_classes=1000)
    assert_same_weights(same, src)
    new = create_model("S/32", pretrained=str(tmp_path / "w.safetensors"), num_classes=10)
    assert new.head.weight.shape == (10, 512) and new.head.weight.abs().sum() == 0
    torch.testing.assert_close(new.blocks[3].mlp_channels.fc2.weight, src.blocks[3].mlp_channels.fc2.weight)


def test_strict_loading_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    sd = small_model().state_dict()
    del sd["blocks.2.norm1.bias"]
    sd["blocks.2.extra"] = torch.zeros(3)
    sd["norm.weight"] = torch.ones(7)
    save_file(sd, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as e:
        create_model(pretrained=str(tmp_path / "bad.safetensors"))
    msg = str(e.value)
    assert "missing: blocks.2.norm1.bias" in msg and "unexpected: blocks.2.extra" in msg
    assert "mis-shaped: norm.weight (7,) vs model (512,)" in msg


def test_another_architecture_or_input_size_is_refused(tmp_path):
    save_file(small_model().state_dict(), tmp_path / "s32.safetensors")
    with pytest.raises(CheckpointError, match="holds a Mixer-S/32"):
        create_model("B/32", pretrained=str(tmp_path / "s32.safetensors"))
    with pytest.raises(ConfigError, match="not a whole multiple of these weights' 224"):
        create_model(pretrained=str(tmp_path / "s32.safetensors"), img_size=320)


def test_pickle_that_would_write_a_file_is_refused_and_writes_nothing(tmp_path):
    target = tmp_path / "pwned.txt"

    class Payload:
        def __init__(self, where):
            self.where = where

        def __reduce__(self):
            return (pathlib.Path.write_text, (pathlib.Path(self.where), "owned"))

    torch.save({"stem.proj.weight": torch.zeros(1), "x": Payload(target)}, tmp_path / "evil.pth")
    control = tmp_path / "control.txt"  # prove the payload is live: an unsafe load does write
    torch.save({"x": Payload(control)}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.read_text() == "owned"

    with pytest.raises(CheckpointError, match="could run code"):
        create_model(pretrained=str(tmp_path / "evil.pth"))
    assert not target.exists()


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_truncated_checkpoints_are_named_as_such(tmp_path, fmt):
    path = tmp_path / f"w.{fmt}"
    sd = small_model().state_dict()
    save_file(sd, path) if fmt == "safetensors" else torch.save(sd, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(str(path))


def test_folder_without_weights_and_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match="holds no weights"):
        load_checkpoint(str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="no such file or folder"):
        load_checkpoint(str(tmp_path / "nope.safetensors"))
