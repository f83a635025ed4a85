"""A model folder in the clients nobody here wrote: timm's `local-dir:` loader and transformers'
image-classification pipeline (TimmWrapper, or the folder's own code for a custom size), with their
own preprocessing."""


import numpy as np
import pytest
import torch
from PIL import Image

from conftest import randomize_
from mixer_ft import create_model
from mixer_ft.data.images import to_rgb_array
from mixer_ft.use.infer import Classifier
from mixer_ft.weights.model_folder import save_pretrained

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A paper variant (S/16) at 32 px with random weights, saved as `mixer-ft finetune` saves models."""
    model = randomize_(create_model("S/16", img_size=32, num_classes=10, gelu="exact"), seed=3)
    return save_pretrained(model, tmp_path_factory.mktemp("s16") / "model", classes=CLASSES)


def photo_4_3(image_file) -> Image.Image:
    """A smooth 4:3 photo made from a CIFAR image."""
    return Image.open(image_file).convert("RGB").resize((400, 300), Image.BICUBIC)


def our_input(clf: Classifier, photo: Image.Image) -> torch.Tensor:
    """The model input our evaluation preprocessing makes of ``photo``."""
    return clf.pre.eval(torch.from_numpy(np.array(to_rgb_array(("photo", lambda: photo), max_side=512)))[None])


def test_timm_and_the_transformers_pipeline_give_our_top_1(folder, cifar_subset):
    import timm
    from transformers import pipeline

    files = sorted(str(f) for f in (cifar_subset(train=100, test=20) / "test").rglob("*.jpg"))[::10]  # 2 a class
    ours = [r[0]["label"] for r in Classifier.from_pretrained(folder, device="cpu")(files, top_k=1)]
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=theirs))
    with torch.no_grad():
        logits = theirs(torch.stack([transform(Image.open(f).convert("RGB")) for f in files]))
    assert [CLASSES[i] for i in logits.argmax(1)] == ours and len(set(ours)) > 1
    classify = pipeline("image-classification", model=str(folder), device="cpu")
    assert [r[0]["label"] for r in classify(files, top_k=1)] == ours


def test_timm_and_transformers_preprocess_a_4_3_photo_as_we_do(folder, cifar_subset, tmp_path):
    import timm
    from transformers import AutoImageProcessor

    folder64 = save_pretrained(randomize_(create_model("S/32", img_size=64, num_classes=10, gelu="exact")),
                               tmp_path / "s32", classes=CLASSES)
    cat = next((cifar_subset(train=100, test=20) / "test" / "cat").iterdir())
    photo = photo_4_3(cat)
    ours = our_input(Classifier.from_pretrained(folder64, device="cpu"), photo)
    model = timm.create_model(f"local-dir:{folder64}", pretrained=True)
    timm_x = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))(photo)[None]
    hf_x = AutoImageProcessor.from_pretrained(str(folder64))(photo, return_tensors="pt")["pixel_values"]
    for theirs in (timm_x, hf_x):  # the whole image squashed to 64x64, not a centre crop of its short side
        assert theirs.shape == ours.shape and (theirs - ours).abs().mean() < 1e-2


def test_a_custom_size_loads_in_transformers_with_its_own_code_and_gives_our_top_1(smoke_run):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    run, _, images = smoke_run  # the smoke recipe's model: patch 4, width 64, 2 blocks (no timm function)
    folder = run / "model"
    files = sorted(str(f) for f in (images / "test").rglob("*.jpg"))[::10]  # 20 images, 2 a class
    clf = Classifier.from_pretrained(folder, device="cpu")
    ours = clf(files, top_k=1)
    with pytest.raises(ValueError, match="trust_remote_code"):  # transformers asks before it runs the folder's code
        AutoModelForImageClassification.from_pretrained(str(folder), trust_remote_code=False)
    classify = pipeline("image-classification", model=str(folder), device="cpu", trust_remote_code=True)
    theirs = classify(files, top_k=1)
    assert [r[0]["label"] for r in theirs] == [r[0]["label"] for r in ours] and len({r[0]["label"] for r in ours}) > 1
    assert [r[0]["score"] for r in theirs] == pytest.approx([r[0]["score"] for r in ours], abs=2e-2)
    model = AutoModelForImageClassification.from_pretrained(str(folder), trust_remote_code=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the same function as ours on the same input, to float error
        assert torch.allclose(model(pixel_values=x).logits, clf.model(x), atol=1e-5)
    assert model.config.id2label[3] == "cat"
    photo = photo_4_3(files[0])
    ours_x = our_input(clf, photo)
    hf_x = AutoImageProcessor.from_pretrained(str(folder))(photo, return_tensors="pt")["pixel_values"]
    assert hf_x.shape == ours_x.shape and (hf_x - ours_x).abs().mean() < 1e-2  # squashed whole, as ours
