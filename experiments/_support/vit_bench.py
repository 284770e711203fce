"""The ViT the benchmarks time, as the ViT experiment builds it: config per size and precision,
params, loss, evaluation, optimizer, FLOPs and device-resident synthetic batches; and the CLIP
experiment's step (``experiments.bench``, ``gpu_suite``, ``profile_vit`` and the tests share
them)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxgrad.data.captions import caption_table
from jaxgrad.data.synthetic import CLASS_NAMES
from jaxgrad.models.clip import ClipConfig, ClipModel
from jaxgrad.models.vit import ViT, ViTConfig, vit_forward_flops
from jaxgrad.tasks import clip as clip_task
from jaxgrad.tasks.classifier import classifier_loss, classifier_metric
from jaxgrad.training.loop import abstract_params, init_params, make_evaluate
from jaxgrad.training.step import make_train_step

#: the CPU anchor's reduced ViT (dim 96, depth 3)
REDUCED = {"dim": 96, "depth": 3, "heads": 3, "dim_head": 64, "mlp_dim": 192}


def vit_config(size: str, precision: str, layout: str = "auto", **over: Any) -> ViTConfig:
    """``size`` seed | reduced | tiny; bf16 compute for ``precision="bf16"``; ``layout`` as
    :class:`ViTConfig` (auto: per-head blocks on CPU, packed elsewhere); ``over``: other fields."""
    base = ViTConfig(**REDUCED) if size == "reduced" else getattr(ViTConfig, size)()
    dtype = "bfloat16" if precision == "bf16" else "float32"
    return dataclasses.replace(base, dtype=dtype, layout=layout, **over)


def forward_flops(vit: ViTConfig) -> float:
    """Analytic FLOPs of one image's forward pass (a train step: 3x)."""
    names = ("image_size", "patch_size", "dim", "depth", "heads", "dim_head", "mlp_dim",
             "num_classes", "channels")  # fmt: skip
    return vit_forward_flops(**{n: getattr(vit, n) for n in names})


def adam(flat: bool = False) -> optax.GradientTransformation:
    """The seed's ``torch.optim.Adam(lr=1e-3)``; ``flat`` runs it on one flat vector."""
    return optax.flatten(optax.adam(1e-3)) if flat else optax.adam(1e-3)


def vit_graphdef(vit: ViTConfig) -> nnx.GraphDef:
    """The model's structure (no arrays allocated); its dtype decides the compute precision."""
    return abstract_params(ViT, vit)[0]


def vit_params(vit: ViTConfig, key: jax.Array) -> Any:
    """Float32 params (as the experiment): one compiled init serves every compute dtype."""
    return init_params(ViT, dataclasses.replace(vit, dtype="float32"), key)[1]


def vit_loss(vit: ViTConfig):
    """The ViT experiment's loss: the seed's ``CrossEntropyLoss``, dropout on, no augmentation."""
    return classifier_loss(vit_graphdef(vit), label_smoothing=0.0, use_augment=False)


@functools.cache
def vit_evaluate(vit: ViTConfig, batch_size: int):
    """The ViT experiment's evaluation pass, compiled once per (config, batch) and run."""
    return make_evaluate(classifier_metric(vit_graphdef(vit)), batch_size=batch_size)


def synthetic(key: jax.Array, shape: tuple[int, ...], vit: ViTConfig) -> dict:
    """Device-resident random uint8 images ``[*shape, H, W, C]`` and int32 labels ``shape``."""
    k_img, k_lbl = jax.random.split(key)
    hw = (vit.image_size, vit.image_size, vit.channels)
    images = jax.random.randint(k_img, (*shape, *hw), 0, 256, jnp.int32).astype(jnp.uint8)
    return {"images": images, "labels": jax.random.randint(k_lbl, shape, 0, vit.num_classes)}


def clip_step(tiny: bool, key: jax.Array, compiler_options: dict | None = None):
    """``(step, params, opt, clip)``: the CLIP experiment's train step at its defaults (templated
    captions, symmetric loss, clipping + AdamW, the ``logit_scale`` clamp), state donated."""
    clip = ClipConfig.tiny() if tiny else ClipConfig()
    tok, ids, mask = caption_table(CLASS_NAMES, max_len=clip.text.max_len)
    clip = dataclasses.replace(clip, text=dataclasses.replace(clip.text, vocab_size=len(tok)))
    graphdef, params, rest = init_params(ClipModel, clip, key)
    loss_fn = clip_task.clip_loss_fn(graphdef, rest, (jnp.asarray(ids), jnp.asarray(mask)),
                                     loss="clip", freeze_image=False, use_augment=True)  # fmt: skip
    opt, _ = clip_task.clip_optimizer(params, steps=1000, lr=1e-3, warmup_steps=50,
                                      weight_decay=0.1, clip_norm=1.0, freeze_image=False)  # fmt: skip
    step = make_train_step(loss_fn, opt, **clip_task.CLIP_STEP, compiler_options=compiler_options)
    return step, params, opt, clip
