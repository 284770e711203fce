"""The CLIP-style contrastive task (``experiments.clip_contrastive``): :func:`clip_loss_fn`,
:func:`clip_optimizer`, :data:`CLIP_STEP` (the step's clamp and extra metrics) and
:func:`param_groups` (the seed's ``optimizer.param_groups`` check); the evaluation is in
:mod:`jaxgrad.tasks.clip_eval`. The benchmark times these very functions.

The loss is ``loss_fn(params, batch, step_key) -> (loss, aux)``; ``step_key`` is the per-step
key (``fold_in(key, step)`` inside the train step).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxgrad.autodiff.freeze import frozen_mask, optimizer_with_frozen, path_str
from jaxgrad.data.pipeline import augment, normalize
from jaxgrad.losses.contrastive import clip_loss, seed_contrastive_loss, siglip_loss
from jaxgrad.losses.siglip_chunked import siglip_loss_ring
from jaxgrad.models.clip import IMAGE_TOWER, TEXT_TOWER, clamp_logit_scale, l2_normalize

__all__ = [
    "CLIP_LOSSES",
    "CLIP_STEP",
    "IMAGE_GROUP",
    "IMAGE_INPUTS",
    "REST_GROUP",
    "clip_optimizer",
    "clip_loss_fn",
    "group_labels",
    "param_groups",
    "tower_grad_norms",
]


def tower_grad_norms(grads, updates, params) -> dict:
    """Per-tower gradient norms inside the step: does the gradient reach each encoder? (0 for
    an image tower that is not in the params: frozen features read from a cache)"""
    image = grads.get(IMAGE_TOWER)
    return {
        "grad_norm_image": optax.tree.norm(image) if image is not None else jnp.zeros(()),
        "grad_norm_text": optax.tree.norm(grads[TEXT_TOWER]),
        "logit_scale": params["logit_scale"][...],
    }


#: the rest of the CLIP step: ``make_run_chunk(loss_fn, optimizer, **CLIP_STEP)`` (or
#: ``make_train_step``): the ``logit_scale`` clamp after each update, per-tower gradient norms
CLIP_STEP = {"post_update": clamp_logit_scale, "extra_metrics": tower_grad_norms}


#: what ``batch["images"]`` holds for :func:`clip_loss_fn`
IMAGE_INPUTS = ("images", "pixels", "features")
#: the contrastive losses of the CLIP task (``--loss``)
CLIP_LOSSES = ("clip", "siglip", "siglip-ring", "seed")


def clip_loss_fn(
    graphdef: nnx.GraphDef, rest: Any, captions: tuple[jax.Array, jax.Array], *, loss: str,
    freeze_image: bool, use_augment: bool, image_input: str = "images", mesh=None,
):  # fmt: skip
    """The CLIP experiment's ``loss_fn(params, batch, step_key) -> (loss, aux)``.

    ``batch = {"images", "labels"}``; ``captions = (ids [T, C, L], mask [T, C, L])``: each
    image gets a template drawn from the step key, filled with its label. ``loss``: ``clip``
    (symmetric CE), ``siglip``, ``siglip-ring`` (the same sigmoid loss in the SigLIP paper's
    chunked form: text chunks passed around ``mesh``'s devices, never the ``[B, B]`` matrix;
    equal in value and gradients) or ``seed`` (one-way CE). ``freeze_image`` is the seed's
    ``.detach()``: the image features enter the loss as constants. ``image_input``: what
    ``batch["images"]`` holds: ``images`` (uint8 ``[B, H, W, 3]``, normalised and augmented
    here: the ViT tower), ``pixels`` (CLIP-normalised ``[B, 3, S, S]``: the transformers CLIP
    tower) or ``features`` (``[B, E]`` image features of a frozen tower, read from a cache: no
    image tower runs; they enter the loss as constants). Labels outside the caption classes
    make the loss NaN (``class_labels=``), which the train step's guard turns into an error.
    """
    if loss not in CLIP_LOSSES:
        raise ValueError(f"--loss must be one of {CLIP_LOSSES}, got {loss!r}")
    if loss == "siglip-ring" and mesh is None:
        raise ValueError("--loss siglip-ring passes text chunks around a mesh: give mesh=")
    if image_input not in IMAGE_INPUTS:
        raise ValueError(f"image_input must be one of {IMAGE_INPUTS}, got {image_input!r}")
    ids, cmask = captions

    def loss_fn(params, batch, step_key):
        model = nnx.merge(graphdef, params, rest)
        tkey, akey = jax.random.split(step_key)
        labels = batch["labels"]
        t = jax.random.randint(tkey, labels.shape, 0, ids.shape[0])
        tokens, mask = ids[t, labels], cmask[t, labels]
        if image_input == "features":
            img = jax.lax.stop_gradient(l2_normalize(batch["images"].astype(jnp.float32)))
            txt = model.encode_text(tokens, mask)
        elif image_input == "pixels":
            img, txt = model(batch["images"], tokens, mask)
        else:
            images = augment(akey, batch["images"]) if use_augment else batch["images"]
            img, txt = model(normalize(images), tokens, mask)
        if freeze_image:
            img = jax.lax.stop_gradient(img)
        kw = dict(
            image_features=img, text_features=txt, logit_scale=model.logit_scale[...],
            class_labels=labels, num_classes=ids.shape[1],
        )  # fmt: skip
        if loss == "clip":
            return clip_loss(**kw)
        if loss == "siglip":
            return siglip_loss(**kw, logit_bias=model.logit_bias[...])
        if loss == "siglip-ring":
            return siglip_loss_ring(**kw, logit_bias=model.logit_bias[...], mesh=mesh)
        return seed_contrastive_loss(**kw)

    return loss_fn


def clip_optimizer(
    params: Any,
    *,
    steps: int,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
    clip_norm: float | None,
    freeze_image: bool,
    image_lr: float | None = None,
) -> tuple[optax.GradientTransformation, Any]:
    """``(optimizer, frozen mask)``: clip by global norm (None: off) → AdamW, linear warm-up
    and cosine decay over ``steps``, decay on ≥2-D weights only (open_clip's rule);
    ``freeze_image``: the image tower is left out (zero update, no optimizer state).

    ``image_lr`` (not None): two parameter groups, PyTorch's ``param_groups=[{"params":
    image, "lr": image_lr}, {"params": rest, "lr": lr}]``, as ``optax.multi_transform``
    (labels :data:`IMAGE_GROUP` / :data:`REST_GROUP`), each with its own schedule and Adam
    state; clipping stays global (over both groups, as ``clip_grad_norm_`` on all params).
    """
    if image_lr is not None and freeze_image:
        raise ValueError("--image-lr has no effect with --freeze-image (the image tower is frozen)")
    total = max(steps, warmup_steps + 1)  # optax needs decay steps > warmup
    decay = lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)

    def adamw(peak):
        sched = optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total)
        return optax.adamw(sched, weight_decay=weight_decay, mask=decay)

    if image_lr is None:
        opt = adamw(lr)
    else:
        opt = optax.multi_transform(
            {IMAGE_GROUP: adamw(image_lr), REST_GROUP: adamw(lr)}, group_labels
        )
    if clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    frozen = frozen_mask(params, [IMAGE_TOWER] if freeze_image else [])
    if freeze_image:
        opt = optimizer_with_frozen(opt, frozen)
    return opt, frozen


#: the two parameter groups of :func:`clip_optimizer` with ``image_lr``
IMAGE_GROUP, REST_GROUP = "image_group", "rest_group"


def group_labels(params: Any) -> Any:
    """The ``multi_transform`` label of each leaf: :data:`IMAGE_GROUP` under the image tower,
    :data:`REST_GROUP` elsewhere (text tower, ``logit_scale``, ``logit_bias``)."""

    def label(path, _):
        return IMAGE_GROUP if path_str(path).split("/")[0] == IMAGE_TOWER else REST_GROUP

    return jax.tree_util.tree_map_with_path(label, params)


def param_groups(optimizer, params, frozen, *, lr=None) -> list[dict]:
    """The seed's ``param_groups`` check, per top-level module, without running a step.

    ``frozen`` is the bool mask handed to the optimizer; the optimizer-state size per module
    comes from ``jax.eval_shape(optimizer.init, params)`` (traced, nothing allocated): Adam
    holds 2 floats per trainable scalar and none for a frozen one. ``lr`` (optional) maps a
    module name to its peak learning rate, recorded as ``row["lr"]``.
    """
    state = jax.tree_util.tree_leaves_with_path(jax.eval_shape(optimizer.init, params))
    rows: dict[str, dict] = {}
    for (path, x), f in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(frozen)
    ):
        top = path_str(path).split("/")[0]
        row = rows.setdefault(top, {"module": top, "leaves": 0, "params": 0, "frozen": 0})
        row["leaves"] += 1
        row["params"] += int(np.size(x))
        row["frozen"] += int(np.size(x)) if f else 0
    for row in rows.values():
        row["state_floats"] = sum(
            int(np.prod(x.shape)) for p, x in state if row["module"] in path_str(p).split("/")
        )
        if lr is not None:
            row["lr"] = None if row["frozen"] == row["params"] else lr(row["module"])
    return sorted(rows.values(), key=lambda r: r["module"])
