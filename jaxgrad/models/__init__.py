"""Flax NNX models. Each takes its config and ``rngs`` and never computes its own loss."""

from jaxgrad.models.vit import ViT, ViTConfig, count_params

__all__ = ["ViT", "ViTConfig", "count_params"]
