"""Mixup / CutMix (``jaxgrad.data.mix``): the mixed images and the label weight, exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrad.data.mix import mix_images, mix_targets

B, H, W = 5, 8, 8


def _constant_images():
    """Image i is the constant i + 1: every pixel says which image it came from."""
    return jnp.broadcast_to(jnp.arange(1.0, B + 1)[:, None, None, None], (B, H, W, 3))


@pytest.mark.parametrize("seed", range(6))
def test_mixup_is_the_convex_combination_with_the_reversed_batch(seed):
    x = jax.random.normal(jax.random.key(seed), (B, H, W, 3))
    out, lam = mix_images(jax.random.key(100 + seed), x, prob=1.0, cutmix_alpha=0.0)
    assert 0.0 < float(lam) < 1.0
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], rtol=1e-6, atol=1e-6)
    t = jax.nn.one_hot(jnp.arange(B), B)
    mixed = mix_targets(t, lam)
    np.testing.assert_allclose(mixed.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed[0, 0], lam, rtol=1e-6)  # own label: λ
    np.testing.assert_allclose(mixed[0, B - 1], 1 - lam, rtol=1e-6)  # partner's: 1 - λ


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_label_weight_is_the_exact_fraction_of_pixels_kept(seed):
    x = _constant_images()
    out, lam = mix_images(jax.random.key(seed), x, prob=1.0, mixup_alpha=0.0)
    own = np.asarray(out[..., 0]) == np.asarray(x[..., 0])  # [B, H, W]
    partner = np.asarray(out[..., 0]) == np.asarray(x[::-1][..., 0])
    middle = B // 2  # paired with itself: every pixel is its own
    for i in range(B):
        if i != middle:
            assert (own[i] | partner[i]).all() and not (own[i] & partner[i]).any()
            np.testing.assert_allclose(own[i].mean(), lam, rtol=1e-6)
    box = ~own[0]
    rows, cols = np.nonzero(box)
    if rows.size:  # one axis-aligned rectangle, the same for every image
        assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        assert all((~own[i] == box).all() for i in range(B) if i != middle)


def test_prob_zero_is_the_identity_and_bad_input_is_refused():
    x = _constant_images()
    out, lam = mix_images(jax.random.key(0), x, prob=0.0)
    assert float(lam) == 1.0 and (out == x).all()
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        mix_images(jax.random.key(0), x, prob=1.5)
    with pytest.raises(ValueError, match="float images"):
        mix_images(jax.random.key(0), x.astype(jnp.uint8), prob=1.0)
