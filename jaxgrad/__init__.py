"""jaxgrad: PyTorch autograd training scenarios as pure JAX functions.

Layers (imports point downwards only): autograd helpers and losses (jax/optax only) ←
models (flax NNX) ← training pieces ← experiments (outside this package).
"""

from jaxgrad.accumulate import (
    accumulate,
    accumulating_optimizer,
    grad_refs,
    read_refs,
    zero_grad,
)
from jaxgrad.autograd import (
    Backward,
    Pullback,
    backward,
    check_cotangent,
    detach,
    grad,
    hvp,
    nth_grad,
    pullback,
)
from jaxgrad.deps import data_dependence, grad_dependence
from jaxgrad.freeze import frozen_mask, optimizer_with_frozen
from jaxgrad.rng import named_keys
from jaxgrad.train import (
    TrainState,
    init_train_state,
    make_eval_step,
    make_multi_step,
    make_train_step,
)

__version__ = "0.1.0"

__all__ = [
    "Backward",
    "Pullback",
    "TrainState",
    "accumulate",
    "accumulating_optimizer",
    "backward",
    "check_cotangent",
    "data_dependence",
    "detach",
    "frozen_mask",
    "grad",
    "grad_dependence",
    "grad_refs",
    "hvp",
    "init_train_state",
    "make_eval_step",
    "make_multi_step",
    "make_train_step",
    "named_keys",
    "nth_grad",
    "optimizer_with_frozen",
    "pullback",
    "read_refs",
    "zero_grad",
]
