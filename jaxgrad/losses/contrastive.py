"""Contrastive image–text losses: the seed's one-directional form, CLIP's symmetric loss, SigLIP.

The seed (000) trains a CLIP image tower against a custom text encoder with::

    logits = image_features @ text_features.T          # [B, B]
    loss = torch.nn.CrossEntropyLoss()(logits, torch.arange(len(logits)))

Row ``i`` of ``logits`` scores image ``i`` against every caption in the batch; the matching
caption sits on the diagonal, so the targets are ``arange(B)``. Every function here is pure
jax/optax, takes keyword-only arguments and returns ``(loss, aux)`` where ``aux`` holds
accuracy-style metrics (``i2t_acc``: the fraction of images whose best caption is their own;
``t2i_acc``: the same for captions), so it plugs straight into
:func:`jaxgrad.training.step.make_train_step` as the tail of a ``loss_fn``.

Shapes: ``image_features`` ``[B, D]``, ``text_features`` ``[B, D]``; row ``i`` of one matches
row ``i`` of the other. ``logit_scale`` and ``logit_bias`` are scalars in log/additive space
(open_clip's convention: the multiplier is ``exp(logit_scale)``, init ``ln(1/0.07)``).

Class labels: when the captions were looked up from class labels (``ids[template, labels]``,
a gather that silently clamps label 10, 500 or -1 to a valid row), pass them as
``class_labels=labels, num_classes=C``: concrete out-of-range labels raise ValueError, traced
ones make the loss NaN, which the non-finite guard stops on (see :mod:`jaxgrad.losses.classification`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxgrad.losses.classification import check_labels, labels_valid

__all__ = [
    "as_scalar",
    "check_pair",
    "clip_loss",
    "contrastive_logits",
    "refuse_bad_labels",
    "retrieval_metrics",
    "seed_contrastive_loss",
    "siglip_loss",
]


def check_pair(image_features: jax.Array, text_features: jax.Array) -> None:
    """Shape checks at trace time; the messages say what the caller has to change."""
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError(
            "image_features and text_features must be [B, D] matrices, got shapes "
            f"{image_features.shape} and {text_features.shape}; flatten or pool first"
        )
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {image_features.shape} and text_features {text_features.shape} "
            "must have the same [B, D] shape: one caption per image, projected to one shared "
            "embedding width"
        )
    if image_features.shape[0] < 2:
        raise ValueError(
            f"a contrastive loss needs at least 2 pairs in the batch, got B={image_features.shape[0]}"
        )


def refuse_bad_labels(loss: jax.Array, class_labels, num_classes: int | None) -> jax.Array:
    if class_labels is None:
        return loss
    if num_classes is None:
        raise ValueError("class_labels= needs num_classes= (the number of caption classes)")
    check_labels(class_labels, num_classes, name="class_labels")
    return jnp.where(jnp.all(labels_valid(class_labels, num_classes)), loss, jnp.nan)


def as_scalar(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {x.shape}")
    return x


def contrastive_logits(
    *, image_features: jax.Array, text_features: jax.Array, logit_scale=None
) -> jax.Array:
    """``exp(logit_scale) · image_features @ text_featuresᵀ`` → ``[B, B]`` (unscaled if None)."""
    logits = image_features @ text_features.T
    if logit_scale is not None:
        logits = jnp.exp(as_scalar(logit_scale, "logit_scale")).astype(logits.dtype) * logits
    return logits


def _accuracies(logits: jax.Array) -> dict[str, jax.Array]:
    """Top-1 along rows (image→text) and columns (text→image); the diagonal is correct."""
    target = jnp.arange(logits.shape[0])
    return {
        "i2t_acc": jnp.mean(jnp.argmax(logits, axis=1) == target),
        "t2i_acc": jnp.mean(jnp.argmax(logits, axis=0) == target),
    }


def seed_contrastive_loss(
    *,
    image_features: jax.Array,
    text_features: jax.Array,
    logit_scale=None,
    class_labels=None,
    num_classes: int | None = None,
) -> tuple[jax.Array, dict]:
    """The seed's loss: ``CrossEntropyLoss(image_features @ text_features.T, arange(B))``.

    One direction only (images classify captions); the features are used as given (the seed
    does not normalise them) and the logits are scaled by ``exp(logit_scale)`` when it is given.
    Returns ``(loss, {"i2t_acc", "t2i_acc"})``.
    """
    check_pair(image_features, text_features)
    logits = contrastive_logits(
        image_features=image_features, text_features=text_features, logit_scale=logit_scale
    )
    labels = jnp.arange(logits.shape[0])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return refuse_bad_labels(loss, class_labels, num_classes), _accuracies(logits)


def clip_loss(
    *,
    image_features: jax.Array,
    text_features: jax.Array,
    logit_scale,
    class_labels=None,
    num_classes: int | None = None,
) -> tuple[jax.Array, dict]:
    """CLIP's symmetric loss ``(CE(logits, arange) + CE(logitsᵀ, arange)) / 2``.

    ``logits = exp(logit_scale) · image_features @ text_featuresᵀ``; the features are expected
    L2-normalised (the model does it), so each logit is a scaled cosine similarity.
    Returns ``(loss, {"loss_i2t", "loss_t2i", "i2t_acc", "t2i_acc", "scale"})``.
    """
    check_pair(image_features, text_features)
    logits = contrastive_logits(
        image_features=image_features, text_features=text_features, logit_scale=logit_scale
    )
    labels = jnp.arange(logits.shape[0])
    loss_i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss_t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    aux = {"loss_i2t": loss_i2t, "loss_t2i": loss_t2i, **_accuracies(logits)}
    aux["scale"] = jnp.exp(logit_scale)
    return refuse_bad_labels((loss_i2t + loss_t2i) / 2, class_labels, num_classes), aux


def siglip_loss(
    *,
    image_features: jax.Array,
    text_features: jax.Array,
    logit_scale,
    logit_bias,
    class_labels=None,
    num_classes: int | None = None,
) -> tuple[jax.Array, dict]:
    """SigLIP's pairwise sigmoid loss: ``−(1/B) Σ_ij log σ(z_ij · (t · xᵢ·yⱼ + b))``.

    ``z_ij = +1`` on the diagonal (matching pair) and ``−1`` elsewhere; ``t = exp(logit_scale)``;
    ``b = logit_bias`` (SigLIP initialises it to −10 so that the B² − B negatives do not swamp
    the first steps). Each pair is an independent binary problem: no softmax over the batch.
    Returns ``(loss, {"i2t_acc", "t2i_acc", "scale", "bias"})``.
    """
    check_pair(image_features, text_features)
    logit_bias = as_scalar(logit_bias, "logit_bias")
    logits = contrastive_logits(
        image_features=image_features, text_features=text_features, logit_scale=logit_scale
    ) + logit_bias.astype(image_features.dtype)
    b = logits.shape[0]
    z = 2.0 * jnp.eye(b, dtype=logits.dtype) - 1.0
    loss = -jnp.sum(jax.nn.log_sigmoid(z * logits)) / b
    aux = {**_accuracies(logits), "scale": jnp.exp(logit_scale), "bias": logit_bias}
    return refuse_bad_labels(loss, class_labels, num_classes), aux


def retrieval_metrics(
    *,
    image_features: jax.Array,
    text_features: jax.Array,
    image_labels: jax.Array,
    text_labels: jax.Array,
    ks: tuple[int, ...] = (1, 5),
) -> dict[str, jax.Array]:
    """Image↔text recall@k where a hit is a retrieved item of the query's class.

    Captions built from class templates are interchangeable within a class ("a photo of a
    cat." twice is the same text), so exact-pair recall would score ties at random; counting
    any same-class item among the top k is the meaningful version for labelled data.
    Shapes: features ``[N, D]``, labels ``[N]`` int. Returns ``i2t_r@k`` and ``t2i_r@k``.
    """
    check_pair(image_features, text_features)
    sims = image_features @ text_features.T  # [N_img, N_txt]
    out = {}
    for k in ks:
        if not 1 <= k <= sims.shape[1]:
            raise ValueError(f"recall@{k} needs 1 <= k <= N={sims.shape[1]}")
        _, i2t = jax.lax.top_k(sims, k)  # [N, k] caption indices per image
        _, t2i = jax.lax.top_k(sims.T, k)  # [N, k] image indices per caption
        hit_i2t = jnp.any(text_labels[i2t] == image_labels[:, None], axis=1)
        hit_t2i = jnp.any(image_labels[t2i] == text_labels[:, None], axis=1)
        out[f"i2t_r@{k}"] = jnp.mean(hit_i2t)
        out[f"t2i_r@{k}"] = jnp.mean(hit_t2i)
    return out
