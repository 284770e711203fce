"""Contrastive losses against hand-derived forms (jaxgrad.losses.contrastive)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jaxgrad.losses.contrastive import (
    clip_loss,
    retrieval_metrics,
    seed_contrastive_loss,
    siglip_loss,
)

# A fixed 3×3 example: three image and three caption features (not normalised, not symmetric).
IMG = np.array([[1.0, 0.2, -0.3], [0.1, 0.8, 0.4], [-0.5, 0.3, 0.9]])
TXT = np.array([[0.7, -0.1, 0.2], [0.3, 1.1, -0.2], [0.0, 0.4, 0.6]])
SCALE = 0.7  # logit_scale: multiplier exp(0.7)


def _softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _hand_clip(img, txt, s):
    """Symmetric CE and its gradients, written out: dℓ/dL = (P_row − I)/2B + (P_col − I)/2B."""
    b = img.shape[0]
    logits = math.exp(s) * img @ txt.T
    eye = np.eye(b)
    p_row, p_col = _softmax(logits, 1), _softmax(logits, 0)
    ce_row = -np.log(np.diag(p_row)).mean()  # image i picks caption i
    ce_col = -np.log(np.diag(p_col)).mean()  # caption j picks image j
    d_logits = (p_row - eye) / (2 * b) + (p_col - eye) / (2 * b)
    return (
        (ce_row + ce_col) / 2,
        math.exp(s) * d_logits @ txt,  # d/d img
        math.exp(s) * d_logits.T @ img,  # d/d txt
        float(np.sum(d_logits * logits)),  # d/d logit_scale (chain rule through exp)
    )


def test_clip_loss_closed_form_on_identity_features():
    # img = txt = I, scale 1: each row's CE is log(e + 2) − 1, both directions alike.
    eye = jnp.eye(3)
    loss, aux = clip_loss(image_features=eye, text_features=eye, logit_scale=0.0)
    np.testing.assert_allclose(loss, math.log(math.e + 2) - 1, rtol=1e-6)
    assert aux["i2t_acc"] == 1.0 and aux["t2i_acc"] == 1.0


def test_clip_loss_and_gradient_match_hand_derived_3x3():
    want_loss, want_gi, want_gt, want_gs = _hand_clip(IMG, TXT, SCALE)
    with jax.enable_x64(True):
        f = lambda i, t, s: clip_loss(image_features=i, text_features=t, logit_scale=s)[0]
        args = (jnp.asarray(IMG), jnp.asarray(TXT), jnp.asarray(SCALE))
        loss = f(*args)
        gi, gt, gs = jax.grad(f, argnums=(0, 1, 2))(*args)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(gi, want_gi, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gt, want_gt, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gs, want_gs, rtol=1e-10)


def test_clip_loss_is_the_mean_of_both_directions():
    loss, aux = clip_loss(
        image_features=jnp.asarray(IMG, jnp.float32),
        text_features=jnp.asarray(TXT, jnp.float32),
        logit_scale=SCALE,
    )
    # swapping the towers transposes the logits: the symmetric loss does not change
    swapped, _ = clip_loss(
        image_features=jnp.asarray(TXT, jnp.float32),
        text_features=jnp.asarray(IMG, jnp.float32),
        logit_scale=SCALE,
    )
    np.testing.assert_allclose(loss, (aux["loss_i2t"] + aux["loss_t2i"]) / 2, rtol=1e-6)
    np.testing.assert_allclose(loss, swapped, rtol=1e-6)
    np.testing.assert_allclose(aux["scale"], math.exp(SCALE), rtol=1e-6)


def test_seed_loss_is_one_directional_cross_entropy():
    # The seed: CrossEntropyLoss(img @ txt.T, arange) — rows only, no scale, no normalisation.
    logits = IMG @ TXT.T
    want = -np.log(np.diag(_softmax(logits, 1))).mean()
    with jax.enable_x64(True):
        loss, aux = seed_contrastive_loss(
            image_features=jnp.asarray(IMG), text_features=jnp.asarray(TXT)
        )
        scaled, _ = seed_contrastive_loss(
            image_features=jnp.asarray(IMG), text_features=jnp.asarray(TXT), logit_scale=SCALE
        )
        _, clip_aux = clip_loss(
            image_features=jnp.asarray(IMG), text_features=jnp.asarray(TXT), logit_scale=SCALE
        )
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    np.testing.assert_allclose(scaled, clip_aux["loss_i2t"], rtol=1e-12)
    assert aux["i2t_acc"] == np.mean(np.argmax(logits, 1) == np.arange(3))


def test_siglip_loss_closed_form():
    # img = txt = I, t = 1, b = 0: diagonal terms log σ(1), the six off-diagonal log σ(0).
    eye = jnp.eye(3)
    loss, aux = siglip_loss(image_features=eye, text_features=eye, logit_scale=0.0, logit_bias=0.0)
    want = -(3 * math.log(1 / (1 + math.exp(-1))) + 6 * math.log(0.5)) / 3
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert aux["bias"] == 0.0


def test_siglip_bias_minus_ten_makes_negatives_cheap():
    # With b = −10 the B² − B negative pairs cost ~e^-10 each; the loss is ~10 per positive.
    eye = jnp.eye(3)
    loss, _ = siglip_loss(image_features=eye, text_features=eye, logit_scale=0.0, logit_bias=-10.0)
    want = -(3 * math.log(1 / (1 + math.exp(9))) + 6 * math.log(1 / (1 + math.exp(-10)))) / 3
    np.testing.assert_allclose(loss, want, rtol=1e-6)


@pytest.mark.parametrize("which", ["seed", "clip", "siglip"])
def test_losses_pass_check_grads_in_float64(which):
    with jax.enable_x64(True):
        i, t = jnp.asarray(IMG), jnp.asarray(TXT)
        fns = {
            "seed": lambda i, t, s: seed_contrastive_loss(
                image_features=i, text_features=t, logit_scale=s
            )[0],
            "clip": lambda i, t, s: clip_loss(image_features=i, text_features=t, logit_scale=s)[0],
            "siglip": lambda i, t, s: siglip_loss(
                image_features=i, text_features=t, logit_scale=s, logit_bias=jnp.asarray(-1.0)
            )[0],
        }
        check_grads(fns[which], (i, t, jnp.asarray(SCALE)), order=2, modes=("rev",))


@pytest.mark.parametrize("loss", [seed_contrastive_loss, clip_loss])
def test_jit_matches_no_jit(loss, key):
    k1, k2 = jax.random.split(key)
    i = jax.random.normal(k1, (8, 5))
    t = jax.random.normal(k2, (8, 5))
    f = lambda i, t, s: loss(image_features=i, text_features=t, logit_scale=s)
    eager = f(i, t, jnp.float32(0.3))
    jitted = jax.jit(f)(i, t, jnp.float32(0.3))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted)


def test_optax_reference_agrees_in_float32(key):
    k1, k2 = jax.random.split(key)
    i = jax.random.normal(k1, (6, 4))
    t = jax.random.normal(k2, (6, 4))
    logits = jnp.exp(1.2) * i @ t.T
    labels = jnp.arange(6)
    want = (
        optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    ) / 2
    got, _ = clip_loss(image_features=i, text_features=t, logit_scale=jnp.float32(1.2))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mismatched_shapes_raise_with_advice():
    with pytest.raises(ValueError, match="same \\[B, D\\] shape"):
        clip_loss(image_features=jnp.ones((4, 3)), text_features=jnp.ones((3, 3)), logit_scale=0.0)
    with pytest.raises(ValueError, match="\\[B, D\\] matrices"):
        seed_contrastive_loss(image_features=jnp.ones((4,)), text_features=jnp.ones((4,)))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        clip_loss(image_features=jnp.ones((1, 3)), text_features=jnp.ones((1, 3)), logit_scale=0.0)
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        clip_loss(
            image_features=jnp.ones((2, 3)), text_features=jnp.ones((2, 3)), logit_scale=jnp.ones(1)
        )


def test_retrieval_metrics_count_same_class_hits():
    # 4 images, 4 captions; classes [0, 0, 1, 2]. Features chosen so the top caption of
    # image 3 (class 2) is caption 2 (class 1): a miss at k=1, a hit at k=2.
    img = jnp.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0.9, 0.4]])
    txt = jnp.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0, 1.0]])
    labels = jnp.array([0, 0, 1, 2])
    m = retrieval_metrics(
        image_features=img, text_features=txt, image_labels=labels, text_labels=labels, ks=(1, 2)
    )
    assert float(m["i2t_r@1"]) == 0.75
    assert float(m["i2t_r@2"]) == 1.0
    # caption 3 (class 2) is closest to image 3: every caption finds its class at k=1
    assert float(m["t2i_r@1"]) == 1.0
    with pytest.raises(ValueError, match="recall@5"):
        retrieval_metrics(
            image_features=img, text_features=txt, image_labels=labels, text_labels=labels, ks=(5,)
        )
