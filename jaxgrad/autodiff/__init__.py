"""PyTorch's autograd idioms as functions: vjp/pullback/grad/hvp, jaxpr dependence, gradient accumulation, freezing. Imports jax and optax only."""
