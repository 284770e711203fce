"""The ViT the benchmarks time, as the ViT experiment builds it: config per size and precision,
params, loss, evaluation, optimizer and device-resident synthetic batches (``experiments.bench``,
``experiments.profile_vit`` and the tests share them)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxgrad.models.vit import ViT, ViTConfig
from jaxgrad.tasks.classifier import classifier_loss, classifier_metric
from jaxgrad.training.loop import abstract_params, init_params, make_evaluate

#: the CPU anchor's reduced ViT (dim 96, depth 3)
REDUCED = {"dim": 96, "depth": 3, "heads": 3, "dim_head": 64, "mlp_dim": 192}


def vit_config(size: str, precision: str, layout: str = "auto") -> ViTConfig:
    """``size`` seed | reduced | tiny; bf16 compute for ``precision="bf16"``; ``layout`` as
    :class:`ViTConfig` (auto: per-head blocks on CPU, packed elsewhere)."""
    base = ViTConfig(**REDUCED) if size == "reduced" else getattr(ViTConfig, size)()
    dtype = "bfloat16" if precision == "bf16" else "float32"
    return dataclasses.replace(base, dtype=dtype, layout=layout)


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
