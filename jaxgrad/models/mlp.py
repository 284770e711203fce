"""Fully-connected networks for physics-informed training (flax NNX, tanh, Xavier init).

- :class:`MLP`: ``[D, h, ..., h, 1]`` with tanh between layers (Raissi-style PINN).
- :class:`ModifiedMLP`: the "improved fully-connected architecture" of Wang, Teng & Perdikaris
  (2021): two encoders ``U = φ(X W_u + b_u)``, ``V = φ(X W_v + b_v)``, ``H_1 = φ(X W_1 + b_1)``,
  then per hidden layer ``Z_k = φ(H_k W_k + b_k)``, ``H_{k+1} = (1 − Z_k) ⊙ U + Z_k ⊙ V``,
  output ``H_L W + b``. The gates carry the input features to every layer. ``form="code"``
  is the authors' released code instead: no ungated first layer (the gates start from the
  input, ``H_0 = X``, ``H_{k+1} = Z_k ⊙ U + (1 − Z_k) ⊙ V``) and Xavier-normal encoder biases.

Both standardise their inputs inside the model, ``(x - mean) / std`` with constants of the
domain (the authors standardise the sampled points the same way), so derivatives taken with
respect to the physical coordinates include the ``1/std`` factor automatically.

Init: Xavier/Glorot *normal* without truncation (the authors' ``randn * sqrt(2 / (in + out))``),
zero biases. Kernels are ``[in, out]`` (weight matrices, ``ndim == 2``; biases ``ndim == 1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["MLP", "ModifiedMLP", "xavier_normal"]


def xavier_normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Glorot normal *without* truncation: ``randn * sqrt(2 / (fan_in + fan_out))``, ``[in, out]``.

    (``jax.nn.initializers.glorot_normal`` truncates at 2σ and rescales; the authors do not.)
    """
    fan_in, fan_out = shape[-2], shape[-1]
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / (fan_in + fan_out)).astype(dtype)


def _dense(n_in: int, n_out: int, rngs: nnx.Rngs, bias_init=jax.nn.initializers.zeros):
    return nnx.Linear(n_in, n_out, kernel_init=xavier_normal, bias_init=bias_init, rngs=rngs)


class _Standardized(nnx.Module):
    """The constructor both networks share: ``layers = (D, ..., out)``, the domain's ``mean``
    and ``std`` per input dimension; each subclass builds its layers in ``_build``."""

    def __init__(
        self,
        layers: Sequence[int],
        *,
        rngs: nnx.Rngs,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **options,
    ):
        self._build(tuple(layers), rngs, **options)  # checks ``layers`` first
        in_dim = layers[0]
        mean = (0.0,) * in_dim if mean is None else tuple(float(m) for m in mean)
        std = (1.0,) * in_dim if std is None else tuple(float(s) for s in std)
        if len(mean) != in_dim or len(std) != in_dim or min(std) <= 0:
            raise ValueError(
                f"mean and std need {in_dim} entries each (std > 0), got {mean} and {std}"
            )
        self.in_dim = in_dim
        self.mean, self.std = mean, std  # static Python floats: constants of the domain

    def standardize(self, x: jax.Array) -> jax.Array:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected points [N, {self.in_dim}], got shape {x.shape}")
        # explicit [1, ..., D] constants: no implicit rank promotion of [D] against [..., D]
        shape = (1,) * (x.ndim - 1) + (-1,)
        mean = jnp.asarray(self.mean, x.dtype).reshape(shape)
        std = jnp.asarray(self.std, x.dtype).reshape(shape)
        return (x - mean) / std


class MLP(_Standardized):
    """``[N, D] -> [N, out]``: ``layers = (D, h1, ..., out)``, tanh on every hidden layer."""

    def _build(self, layers: tuple[int, ...], rngs: nnx.Rngs):
        if len(layers) < 2:
            raise ValueError(f"layers needs at least (in, out), got {layers}")
        self.linears = nnx.List(_dense(a, b, rngs) for a, b in zip(layers[:-1], layers[1:]))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.standardize(x)
        for lin in self.linears[:-1]:
            h = jnp.tanh(lin(h))
        return self.linears[-1](h)


def _xavier_bias(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """``[out]`` bias drawn like a ``[1, out]`` Xavier-normal matrix (the authors' encoders)."""
    return xavier_normal(key, (1, *shape), dtype)[0]


class ModifiedMLP(_Standardized):
    """The improved fully-connected architecture; ``layers = (D, h, ..., h, out)``, equal ``h``.

    ``form="paper"`` (default, the paper's equations): encoders ``W_u, W_v [D, h]``,
    ``W_1 [D, h]``, ``len(layers) - 3`` gated hidden layers ``[h, h]`` and the output
    ``[h, out]``. ``form="code"`` (the authors' ``Helmholtz2D_model_tf.py``): encoders with
    Xavier-normal biases, gated layers ``[D, h]`` then ``[h, h]`` (``len(layers) - 2`` of them),
    the output.
    """

    def _build(self, layers: tuple[int, ...], rngs: nnx.Rngs, form: str = "paper"):
        hidden = layers[1:-1]
        if len(layers) < 3 or len(set(hidden)) != 1:
            raise ValueError(
                f"the gated architecture needs (in, h, ..., h, out) with equal hidden widths, "
                f"got {layers}"
            )
        if form not in ("paper", "code"):
            raise ValueError(f"form must be 'paper' or 'code', got {form!r}")
        self.form = form
        d, h = layers[0], hidden[0]
        if form == "paper":
            self.encoder_u = _dense(d, h, rngs)
            self.encoder_v = _dense(d, h, rngs)
            self.first = _dense(d, h, rngs)
            self.gates = nnx.List(_dense(h, h, rngs) for _ in hidden[1:])
        else:
            self.encoder_u = _dense(d, h, rngs, bias_init=_xavier_bias)
            self.encoder_v = _dense(d, h, rngs, bias_init=_xavier_bias)
            self.gates = nnx.List(_dense(a, b, rngs) for a, b in zip(layers[:-2], hidden))
        self.out = _dense(h, layers[-1], rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.standardize(x)
        u = jnp.tanh(self.encoder_u(x))
        v = jnp.tanh(self.encoder_v(x))
        if self.form == "code":  # Z ⊙ U + (1 − Z) ⊙ V: the paper's mix with U and V swapped
            u, v = v, u
            h = x
        else:
            h = jnp.tanh(self.first(x))
        for gate in self.gates:
            z = jnp.tanh(gate(h))
            h = (1 - z) * u + z * v
        return self.out(h)
