"""The model a recipe trains: random weights or the upstream's, its architecture, and the head rule."""

from __future__ import annotations

from mixer_ft.model.config import MixerConfig
from mixer_ft.model.mixer import MlpMixer
from mixer_ft.train.recipe import Recipe
from mixer_ft.weights.loading import create_model, model_from_checkpoint
from mixer_ft.weights.sources import load_checkpoint


def head_choice(recipe: Recipe, theirs: list[str] | None, ours: list[str]) -> tuple[bool, str]:
    """Whether the fine-tuned model gets a new zero head, and why (the run says it).

    As vit_jax's ``load_pretrained``, a new zero head always, unless the checkpoint names its classes
    and they are the data set's, in order: a model of ours continuing on its own classes keeps its
    head. The recipe key ``new_head`` forces either way.
    """
    if recipe.new_head is not None:
        return recipe.new_head, f"the recipe says new_head = {str(recipe.new_head).lower()}"
    if theirs is None:
        return True, "the checkpoint does not name its classes (as upstream, the head is always new)"
    if theirs == ours:
        return False, f"the checkpoint's {len(theirs)} classes are the data set's, in order"
    return True, f"the checkpoint's {len(theirs)} classes are not the data set's {len(ours)}, in order"


def build_model(recipe: Recipe, classes: list[str]) -> tuple[MlpMixer, str]:
    """The recipe's model for a data set of ``classes``, and how its head was made."""
    arch, n = dict(recipe.architecture), len(classes)
    if recipe.model == "custom":
        return MlpMixer(MixerConfig.from_dict({**arch, "num_classes": n})), "new zero head (no upstream)"
    if recipe.upstream == "none":
        return create_model(recipe.variant, num_classes=n, **arch), "new zero head (no upstream)"
    ckpt = load_checkpoint(recipe.upstream, variant=recipe.variant)
    new, why = head_choice(recipe, ckpt.classes, classes)
    # With no variant named, the architecture is the upstream file's, whatever it is. resize: how the
    # weights reach another img_size (mixer_ft.model.resolution).
    model = model_from_checkpoint(ckpt, recipe.variant, n, resize=recipe.resize or "tile", new_head=new, **arch)
    return model, f"{'new zero head' if new else 'head kept from the checkpoint'}: {why}"


__all__ = ["build_model", "head_choice"]
