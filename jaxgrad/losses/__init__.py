"""Losses and what is built on their per-term gradients: classification, contrastive (CLIP/SigLIP), per-term gradients, term weighting, PDE operators. Imports jax, optax and jaxgrad.autodiff only."""
