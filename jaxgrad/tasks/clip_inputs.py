"""What a pretrained CLIP image tower reads in a training run: cached features or pixel_values.

``experiments.clip_contrastive --image-encoder clip`` puts a transformers CLIP vision tower
(:func:`jaxgrad.port.hf_clip.load_pretrained`) beside the custom text encoder:

- frozen (``--freeze-image``, the seed's ``.detach()``): the tower's features are computed once
  over train and val images and cached on disk (:func:`jaxgrad.tasks.features.cached_features`,
  keyed by weights + data + preprocessing; a stale cache is refused, never used); the train
  step reads the ``[N, E]`` features and only the text tower runs. The model holds no image
  tower at all (``ClipConfig(image=None)``), so there is nothing to freeze and no zero gradient
  for 88M parameters each step.
- fine-tuned: the images are preprocessed once (:func:`jaxgrad.data.clip_preprocess`: resize
  bicubic, centre crop, CLIP mean/std → ``[N, 3, S, S]`` float32, 4·3·S² bytes per image) and
  the tower runs in every step; :func:`with_image_tower` puts the pretrained weights into the
  model's params in place of the random init.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxgrad.data.clip_preprocess import clip_preprocess
from jaxgrad.models.clip import IMAGE_TOWER
from jaxgrad.tasks.features import FeatureCache, cached_features

__all__ = ["TowerInputs", "tower_inputs", "with_image_tower"]


class TowerInputs(NamedTuple):
    """What ``batch["images"]`` holds (``jaxgrad.tasks.clip.clip_loss_fn(image_input=kind)``)."""

    kind: str  # "images" (uint8 [N, H, W, 3]), "pixels" ([N, 3, S, S]) or "features" ([N, E])
    train: np.ndarray  # the training inputs, row i for image i
    val: np.ndarray | None  # the held-out inputs (None: no val set given)
    cache: dict[str, FeatureCache] | None = None  # "train"/"val" caches of a frozen tower
    tower_params: int = 0  # scalars of a cached (absent) tower, for the param_groups report
    tower_leaves: int = 0  # its parameter arrays


def tower_inputs(
    tower: nnx.Module,
    train_images: np.ndarray,
    val_images: np.ndarray | None,
    *,
    frozen: bool,
    cache_dir: str,
    batch_size: int = 256,
    mesh: Mesh | None = None,
) -> TowerInputs:
    """Cached features (``frozen``) or CLIP pixel_values of uint8 ``[N, H, W, 3]`` images for
    ``tower`` (a :class:`jaxgrad.port.hf_clip.CLIPVisionTower`). ``mesh``: the features are
    extracted with each batch split over its devices (every process of a multi-process run)."""
    size = tower.cfg.image_size
    prep = functools.partial(clip_preprocess, size=size)
    if not frozen:
        pix = lambda x: None if x is None else prep(x)
        return TowerInputs("pixels", pix(train_images), pix(val_images))
    cache = {}
    for part, images in (("train", train_images), ("val", val_images)):
        if images is not None:
            cache[part] = cached_features(
                tower, images, cache_dir, batch_size=min(batch_size, len(images)),
                preprocess=prep, preprocess_id=f"clip_preprocess({size})", mesh=mesh,
            )  # fmt: skip
    leaves = jax.tree_util.tree_leaves(nnx.state(tower, nnx.Param))
    return TowerInputs(
        "features", cache["train"].features, cache["val"].features if "val" in cache else None,
        cache=cache, tower_params=sum(int(np.size(x)) for x in leaves), tower_leaves=len(leaves),
    )  # fmt: skip


def with_image_tower(graphdef: Any, params: Any, rest: Any, tower: nnx.Module):
    """``(graphdef, params, rest)`` of a ``ClipModel`` whose image tower is ``tower`` (the
    pretrained weights in place of the random init; the same ``CLIPVisionConfig``)."""
    model = nnx.merge(graphdef, params, rest)
    own = getattr(model, IMAGE_TOWER)
    if getattr(own, "cfg", None) != tower.cfg:
        raise ValueError(
            f"the model's image tower config {getattr(own, 'cfg', None)} differs from the "
            f"pretrained tower's {tower.cfg}"
        )
    setattr(model, IMAGE_TOWER, tower)
    return nnx.split(model, nnx.Param, ...)
