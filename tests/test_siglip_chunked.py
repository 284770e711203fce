"""Chunked and ring SigLIP (jaxgrad.losses.siglip_chunked) equal the full-matrix siglip_loss.

The ring form on 4 devices runs this file as a script in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag must be set before jax starts);
the parent compares what it prints with the full loss computed here on one device.
"""

import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxgrad.errors import ConfigError
from jaxgrad.losses.contrastive import siglip_loss
from jaxgrad.losses.siglip_chunked import siglip_loss_chunked, siglip_loss_ring

N_DEV = 4
SCALE, BIAS = 2.3, -3.0  # multiplier ~10, SigLIP-like negative bias


def features(b: int, d: int, dtype=np.float32, seed: int = 0):
    """L2-normalised pairs, captions = images + noise: most pairs are their row's best, some
    are not, so the accuracies are neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(b, d))
    txt = img + 0.9 * rng.normal(size=(b, d))
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return norm(img).astype(dtype), norm(txt).astype(dtype)


def value_and_grads(loss, img, txt, scale=SCALE, bias=BIAS, **kw):
    """``(loss, aux, grads w.r.t. (img, txt, logit_scale, logit_bias))`` under jit."""

    def fn(i, t, s, b):
        return loss(image_features=i, text_features=t, logit_scale=s, logit_bias=b, **kw)

    dt = img.dtype
    (value, aux), grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True))(
        img, txt, jnp.asarray(scale, dt), jnp.asarray(bias, dt)
    )
    return value, aux, grads


def eye_closed_form(b: int) -> float:
    """img = txt = I, t = 1, bias 0: B diagonal terms log σ(1), B² − B off-diagonal log σ(0).
    A positive label on any other pair changes it (log σ(0) and log σ(−1) instead)."""
    return -(b * math.log(1 / (1 + math.exp(-1))) + (b * b - b) * math.log(0.5)) / b


def assert_same(got, want, rtol=1e-6, atol=1e-7):
    (gv, ga, gg), (wv, wa, wg) = got, want
    np.testing.assert_allclose(gv, wv, rtol=rtol)
    for a, b in zip(gg, wg, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
    for k in ("i2t_acc", "t2i_acc", "scale", "bias"):
        np.testing.assert_allclose(ga[k], wa[k], rtol=1e-7)


@pytest.fixture(scope="module", autouse=True)
def ring_child(spawn):
    """Start the 4-device child at once, so it runs while the 1-device tests below do."""
    return spawn([__file__], XLA_FLAGS=f"--xla_force_host_platform_device_count={N_DEV}")


@pytest.fixture(scope="module")
def ring(ring_child):
    stdout, stderr = ring_child.communicate(timeout=180)
    assert ring_child.returncode == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("chunk", [4, 24])
def test_chunked_equals_full_in_value_and_gradients(chunk):
    img, txt = features(24, 6)
    want = value_and_grads(siglip_loss, img, txt)
    got = value_and_grads(siglip_loss_chunked, img, txt, chunk=chunk)
    assert 0.0 < float(want[1]["i2t_acc"]) < 1.0  # the accuracies are tested, not saturated
    assert_same(got, want)


def test_chunked_equals_full_in_float64_to_rounding():
    with jax.enable_x64(True):
        img, txt = features(24, 6, np.float64)
        want = value_and_grads(siglip_loss, img, txt)
        got = value_and_grads(siglip_loss_chunked, img, txt, chunk=6)
        assert_same(got, want, rtol=1e-12, atol=1e-14)


def test_chunked_passes_check_grads_in_float64():
    with jax.enable_x64(True):
        img, txt = map(jnp.asarray, features(8, 3, np.float64))

        def f(i, t, s, b):
            return siglip_loss_chunked(
                image_features=i, text_features=t, logit_scale=s, logit_bias=b, chunk=2
            )[0]

        args = (img, txt, jnp.asarray(0.4), jnp.asarray(-1.0))
        check_grads(jax.jit(f), args, order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("chunk", [2, 3])
def test_chunked_positive_labels_sit_on_the_diagonal(chunk):
    # every chunk but the one holding a text's own image sees it as a negative; a positive
    # label on the wrong block (or a wrong row of the right one) changes the closed form
    eye = jnp.eye(6)
    loss, aux = siglip_loss_chunked(
        image_features=eye, text_features=eye, logit_scale=0.0, logit_bias=0.0, chunk=chunk
    )
    np.testing.assert_allclose(loss, eye_closed_form(6), rtol=1e-6)
    assert aux["i2t_acc"] == aux["t2i_acc"] == 1.0


def test_chunked_peak_memory_scales_with_the_chunk_not_the_batch():
    # B = 1024: the full form's gradient holds a few [B, B] float32 matrices (4 MiB each);
    # the chunked one a few [B, 64] blocks (the scan body is rematerialised)
    b, d = 1024, 8
    spec = (jax.ShapeDtypeStruct((b, d), jnp.float32),) * 2 + (
        jax.ShapeDtypeStruct((), jnp.float32),
    ) * 2

    def temp(loss, **kw):
        def fn(i, t, s, bias):
            return loss(image_features=i, text_features=t, logit_scale=s, logit_bias=bias, **kw)

        grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True))
        return grad.lower(*spec).compile().memory_analysis().temp_size_in_bytes

    full, chunked = temp(siglip_loss), temp(siglip_loss_chunked, chunk=64)
    assert full >= 2 * b * b * 4  # at least two [B, B] float32 buffers
    assert chunked < full / 8, (chunked, full)


def test_chunk_that_does_not_divide_the_batch_is_refused():
    img, txt = features(6, 3)
    with pytest.raises(ConfigError, match="chunk=4 must be a positive divisor of the batch size 6"):
        siglip_loss_chunked(
            image_features=img, text_features=txt, logit_scale=0.0, logit_bias=0.0, chunk=4
        )


def test_ring_on_four_devices_equals_full_in_value_and_gradients(ring):
    assert ring["devices"] == N_DEV
    img, txt = features(16, 5)
    want = value_and_grads(siglip_loss, img, txt)
    got = ring["random"]
    got = (got["loss"], got["aux"], [np.asarray(g, np.float32) for g in got["grads"]])
    assert_same(got, want)


def test_ring_positive_block_is_the_diagonal(ring):
    np.testing.assert_allclose(ring["eye"]["loss"], eye_closed_form(16), rtol=1e-6)
    assert ring["eye"]["i2t_acc"] == ring["eye"]["t2i_acc"] == 1.0


def test_ring_refuses_a_batch_the_devices_do_not_divide(ring):
    assert "global batch 18 is not divisible by the 4 devices" in ring["indivisible_error"]


def test_ring_on_a_one_device_mesh_is_the_full_loss():
    from jaxgrad.training.parallel import make_mesh

    img, txt = features(8, 4)
    want = value_and_grads(siglip_loss, img, txt)
    assert_same(value_and_grads(siglip_loss_ring, img, txt, mesh=make_mesh(1)), want)


def _child() -> dict:
    """The 4-device side: the ring loss on features split over the mesh, under jit."""
    from jaxgrad.training.parallel import make_mesh, shard_batch

    mesh = make_mesh()
    img, txt = shard_batch(features(16, 5), mesh)
    value, aux, grads = value_and_grads(siglip_loss_ring, img, txt, mesh=mesh)
    eye = shard_batch(jnp.eye(16), mesh)
    eye_loss, eye_aux, _ = value_and_grads(siglip_loss_ring, eye, eye, 0.0, 0.0, mesh=mesh)
    try:
        odd = jnp.zeros((18, 5))
        siglip_loss_ring(
            image_features=odd, text_features=odd, logit_scale=0.0, logit_bias=0.0, mesh=mesh
        )
        indivisible = ""
    except ConfigError as e:
        indivisible = str(e)
    return {
        "devices": len(jax.devices()),
        "random": {
            "loss": float(value),
            "aux": {k: float(v) for k, v in aux.items()},
            "grads": [np.asarray(g).tolist() for g in grads],
        },
        "eye": {"loss": float(eye_loss), **{k: float(eye_aux[k]) for k in ("i2t_acc", "t2i_acc")}},
        "indivisible_error": indivisible,
    }


if __name__ == "__main__":
    sys.stdout.write(json.dumps(_child()) + "\n")
