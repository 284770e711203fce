"""jaxgrad: PyTorch autograd training scenarios as pure JAX functions.

Layers (imports point downwards only): autograd helpers and losses (jax/optax only) ←
models (flax NNX) ← training pieces ← experiments (outside this package).
"""

from jaxgrad.autodiff.accumulate import (
    accumulate,
    accumulating_optimizer,
    grad_refs,
    read_refs,
    zero_grad,
)
from jaxgrad.autodiff.autograd import (
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
from jaxgrad.autodiff.deps import data_dependence, dependence_matrix, grad_dependence
from jaxgrad.autodiff.freeze import frozen_mask, optimizer_with_frozen
from jaxgrad.inspect.coverage import optimizer_coverage
from jaxgrad.inspect.doctor import diagnose, grad_flow
from jaxgrad.losses.terms import cosine_matrix, grad_stats, term_grads, term_values_and_grads
from jaxgrad.losses.weighting import grad_norm_balancing, lr_annealing, pcgrad, pcgrad_loss
from jaxgrad.training.guard import (
    NonFiniteError,
    check_finite_state,
    check_nonfinite,
    skip_nonfinite,
)
from jaxgrad.training.parallel import data_parallel, make_mesh, shard_batch
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import (
    TrainState,
    init_train_state,
    make_eval_step,
    make_multi_step,
    make_train_step,
)

__version__ = "0.1.0"

__all__ = [
    "Backward",
    "NonFiniteError",
    "Pullback",
    "TrainState",
    "accumulate",
    "accumulating_optimizer",
    "backward",
    "check_cotangent",
    "check_finite_state",
    "check_nonfinite",
    "cosine_matrix",
    "data_dependence",
    "data_parallel",
    "dependence_matrix",
    "detach",
    "diagnose",
    "frozen_mask",
    "grad",
    "grad_dependence",
    "grad_flow",
    "grad_norm_balancing",
    "grad_refs",
    "grad_stats",
    "hvp",
    "init_train_state",
    "lr_annealing",
    "make_eval_step",
    "make_mesh",
    "make_multi_step",
    "make_train_step",
    "named_keys",
    "nth_grad",
    "optimizer_coverage",
    "optimizer_with_frozen",
    "pcgrad",
    "pcgrad_loss",
    "pullback",
    "read_refs",
    "shard_batch",
    "skip_nonfinite",
    "term_grads",
    "term_values_and_grads",
    "zero_grad",
]
