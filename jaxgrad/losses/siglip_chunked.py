"""SigLIP's sigmoid loss without the ``[B, B]`` logit matrix: text chunks, one at a time.

The sigmoid loss is a sum of independent per-pair terms, so it can be computed block by block
(Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", sec. 3.3 and fig. 1):

- :func:`siglip_loss_chunked` (one device): ``lax.scan`` over text chunks of ``chunk`` rows;
  each step scores all ``B`` images against one chunk. The scan body is rematerialised
  (``jax.checkpoint``), so value *and* gradient hold one ``[B, chunk]`` block at a time.
- :func:`siglip_loss_ring` (a mesh): ``jax.shard_map`` over the batch axis; each of the ``n``
  devices holds ``B / n`` images and texts, scores its images against its own texts (the only
  block with positives: the diagonal), then passes its texts to the next device
  (``lax.ppermute``) ``n - 1`` times, scoring each visiting chunk as negatives. A device never
  holds more than one ``[B/n, B/n]`` block; the gradient flows back around the ring
  (``ppermute``'s transpose is the inverse permutation).

Both equal :func:`jaxgrad.losses.contrastive.siglip_loss` in value and gradients (up to float
reduction order) and return the same ``(loss, {"i2t_acc", "t2i_acc", "scale", "bias"})``.
The accuracies compare each pair's logit with the best one of its row / column; they differ
from the full form's argmax only on exact ties. Shapes: features ``[B, D]``, row ``i`` of one
matching row ``i`` of the other.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxgrad.errors import ConfigError
from jaxgrad.losses.contrastive import as_scalar, check_pair, refuse_bad_labels

__all__ = ["siglip_loss_chunked", "siglip_loss_ring"]

_SAVE_ARRIVED = jax.checkpoint_policies.save_only_these_names("siglip_arrived_text")


def _block(img, txt, scale, bias, pos):
    """One block of pair terms. ``img [R, D]``, ``txt [C, D]``, ``pos [R, C]`` bool (the
    matching pairs) or None (all negatives). Returns ``(Σ −log σ(z·logit), row max [R],
    col max [C], row positive logit [R], col positive logit [C])``; the statistics carry no
    gradient (they feed only the accuracies)."""
    logits = scale.astype(img.dtype) * (img @ txt.T) + bias.astype(img.dtype)
    signed = -logits if pos is None else jnp.where(pos, logits, -logits)
    loss = -jnp.sum(jax.nn.log_sigmoid(signed))
    stat = jax.lax.stop_gradient(logits)
    on = jnp.zeros_like(stat) if pos is None else jnp.where(pos, stat, 0.0)
    return loss, stat.max(axis=1), stat.max(axis=0), on.sum(axis=1), on.sum(axis=0)


def _aux(pos_row, row_max, pos_col, col_max, scale, bias) -> dict:
    return {
        "i2t_acc": jnp.mean(pos_row >= row_max),
        "t2i_acc": jnp.mean(pos_col >= col_max),
        "scale": scale,
        "bias": bias,
    }


def siglip_loss_chunked(
    *,
    image_features: jax.Array,
    text_features: jax.Array,
    logit_scale,
    logit_bias,
    chunk: int,
    class_labels=None,
    num_classes: int | None = None,
) -> tuple[jax.Array, dict]:
    """:func:`~jaxgrad.losses.contrastive.siglip_loss`, scanned over text chunks of ``chunk`` rows.

    Peak memory ``O(B · chunk)`` instead of ``O(B²)``, for the loss and its gradient.
    ``chunk`` must divide ``B``; ``chunk = B`` is one block (the full form, rematerialised).
    """
    check_pair(image_features, text_features)
    b, d = image_features.shape
    if not isinstance(chunk, int) or chunk < 1 or b % chunk:
        raise ConfigError(
            f"siglip chunk={chunk!r} must be a positive divisor of the batch size {b}; "
            "pick a chunk that divides the batch (e.g. a power of two)"
        )
    scale = jnp.exp(as_scalar(logit_scale, "logit_scale"))
    bias = as_scalar(logit_bias, "logit_bias")
    rows = jnp.arange(b)[:, None]
    cols = jnp.arange(chunk)[None, :]

    @jax.checkpoint  # the backward pass recomputes each block instead of storing B x B
    def step(carry, xs):
        loss, row_max, pos_row = carry
        txt, j = xs
        pos = rows == j * chunk + cols  # [B, chunk]: the matching texts of this chunk
        part, r_max, c_max, r_pos, c_pos = _block(image_features, txt, scale, bias, pos)
        carry = (loss + part, jnp.maximum(row_max, r_max), pos_row + r_pos)
        return carry, (c_max, c_pos)

    n = b // chunk
    dtype = image_features.dtype
    init = (jnp.zeros((), dtype), jnp.full((b,), -jnp.inf, dtype), jnp.zeros((b,), dtype))
    xs = (text_features.reshape(n, chunk, d), jnp.arange(n))
    (loss, row_max, pos_row), (col_max, pos_col) = jax.lax.scan(step, init, xs)
    aux = _aux(pos_row, row_max, pos_col.reshape(b), col_max.reshape(b), scale, bias)
    return refuse_bad_labels(loss / b, class_labels, num_classes), aux


def siglip_loss_ring(
    *,
    image_features: jax.Array,
    text_features: jax.Array,
    logit_scale,
    logit_bias,
    mesh: Mesh,
    axis: str = "data",  # the batch axis of jaxgrad.training.parallel.make_mesh
    class_labels=None,
    num_classes: int | None = None,
) -> tuple[jax.Array, dict]:
    """:func:`~jaxgrad.losses.contrastive.siglip_loss` over the *global* batch, text chunks passed
    around the ``n`` devices of ``mesh``'s ``axis`` (the SigLIP paper's chunked form).

    ``image_features`` / ``text_features`` are the global ``[B, D]`` arrays (split over
    ``axis`` by the data-parallel step, or by this function's ``shard_map``); ``B`` must be a
    multiple of ``n``. Per device the peak is one ``[B/n, B/n]`` logit block plus, for the
    gradient, the ``n`` visiting text chunks (``B x D`` in all). Call it inside the jitted
    train step; on a 1-device mesh it is the full form.
    """
    check_pair(image_features, text_features)
    n = mesh.shape[axis]
    b = image_features.shape[0]
    if b % n:
        raise ConfigError(
            f"global batch {b} is not divisible by the {n} devices of mesh axis {axis!r}; "
            f"choose a --batch-size that is a multiple of {n}"
        )
    scale = jnp.exp(as_scalar(logit_scale, "logit_scale"))
    bias = as_scalar(logit_bias, "logit_bias")
    ring = [(i, (i + 1) % n) for i in range(n)]  # device i sends its chunk to i + 1

    def local(img, txt, scale, bias):
        # step 0: the device's own texts, the only block holding matching pairs (diagonal)
        pos = jnp.eye(img.shape[0], dtype=bool)
        loss, row_max, col_max, pos_row, pos_col = jax.checkpoint(_block)(
            img, txt, scale, bias, pos
        )

        # recompute each block in the backward pass, but keep the chunk that arrived: the
        # gradient pass then sends only the text gradients back, not the chunks again
        @functools.partial(jax.checkpoint, policy=_SAVE_ARRIVED)
        def step(carry, _):
            txt, col_max, pos_col, loss, row_max = carry
            # the visiting chunk travels with its column statistics; no positives from here on
            txt, col_max, pos_col = jax.lax.ppermute((txt, col_max, pos_col), axis, ring)
            txt = checkpoint_name(txt, "siglip_arrived_text")
            part, r_max, c_max, _, _ = _block(img, txt, scale, bias, None)
            carry = (txt, jnp.maximum(col_max, c_max), pos_col, loss + part,
                     jnp.maximum(row_max, r_max))  # fmt: skip
            return carry, None

        init = (txt, col_max, pos_col, loss, row_max)
        (_, col_max, pos_col, loss, row_max), _ = jax.lax.scan(step, init, length=n - 1)
        if n > 1:  # one more hop brings each chunk's column statistics home
            col_max, pos_col = jax.lax.ppermute((col_max, pos_col), axis, ring)
        loss = jax.lax.psum(loss, axis) / b
        i2t = jax.lax.pmean(jnp.mean(pos_row >= row_max), axis)
        t2i = jax.lax.pmean(jnp.mean(pos_col >= col_max), axis)
        return loss, i2t, t2i

    loss, i2t, t2i = jax.shard_map(
        local, mesh=mesh, in_specs=(P(axis), P(axis), P(), P()), out_specs=(P(), P(), P())
    )(image_features, text_features, scale, bias)
    aux = {"i2t_acc": i2t, "t2i_acc": t2i, "scale": scale, "bias": bias}
    return refuse_bad_labels(loss, class_labels, num_classes), aux
