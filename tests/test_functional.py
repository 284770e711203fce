"""jaxgrad.models.functional: each op computes its plain jnp expression, its hand-written
backward equals jax.grad of that expression (and finite differences in float64), and dropout
draws exactly jax.random.bernoulli's mask."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxgrad.models import functional as F


@pytest.mark.parametrize("shape", [(7,), (3, 5, 11), (2, 3, 65, 65)])
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.37])
def test_dropout_mask_is_jax_random_bernoulli_bit_for_bit(shape, rate, key):
    want = jax.random.bernoulli(key, 1.0 - rate, shape)
    np.testing.assert_array_equal(F.dropout_mask(key, rate, shape), want)
    raw = jax.random.key_data(key)  # a legacy uint32[2] key: the same stream
    np.testing.assert_array_equal(F.dropout_mask(raw, rate, shape), want)


def test_a_slice_of_the_mask_is_computed_alone_and_equals_the_whole_masks_slice(key):
    shape = (4, 3, 9, 9)
    whole = jax.random.bernoulli(key, 0.9, shape)
    for axis in range(4):
        for i in (0, shape[axis] - 1):
            got = F.dropout_mask(key, 0.1, shape, at=(axis, i))
            np.testing.assert_array_equal(got, np.take(np.asarray(whole), i, axis=axis))


def test_other_prngs_go_through_jax_random(key):
    rbg = jax.random.key(3, impl="rbg")
    np.testing.assert_array_equal(
        F.dropout_mask(rbg, 0.2, (5, 7)), jax.random.bernoulli(rbg, 0.8, (5, 7))
    )


def test_dropout_scales_kept_values_as_torch_does(key):
    x = jax.random.normal(key, (64, 33))
    rate = 0.1
    got = np.asarray(F.dropout(x, rate, key))
    mask = np.asarray(jax.random.bernoulli(key, 1.0 - rate, x.shape))
    scale = np.float32(1.0) / np.float32(1.0 - rate)  # torch: noise.div_(1 - p); input * noise
    np.testing.assert_array_equal(got, np.where(mask, np.asarray(x) * scale, 0.0))
    assert 0.05 < 1 - mask.mean() < 0.15
    np.testing.assert_array_equal(F.dropout(x, 0.0, key), x)


def test_the_hash_is_inlined_not_a_loop(key):
    """jax lowers threefry as a 5-iteration while loop on CPU; ours must be straight-line."""
    fn = jax.jit(lambda x, k: F.dropout(x, 0.1, k))
    x = jnp.ones((8, 16))
    assert "threefry2x32" not in str(jax.make_jaxpr(fn)(x, key))
    assert " while(" not in fn.lower(x, key).compile().as_text()


def _vjp_pair(fast, plain, args, cotangent_key):
    out, pull = jax.vjp(fast, *args)
    ref, ref_pull = jax.vjp(plain, *args)
    ct = jax.tree.map(lambda o: jax.random.normal(cotangent_key, o.shape, o.dtype), out)
    return (out, pull(ct)), (ref, ref_pull(ct))


@pytest.mark.parametrize("k, n", [(96, 64), (64, 96), (48, 96), (96, 10)])  # both orientations
def test_dense_forward_and_gradients_equal_autodiff_of_x_at_w_plus_b(k, n, key):
    kx, kw, kb, kc = jax.random.split(key, 4)
    args = (jax.random.normal(kx, (130, k)), jax.random.normal(kw, (k, n)),
            jax.random.normal(kb, (n,)))  # fmt: skip
    got, want = _vjp_pair(F.dense, lambda x, w, b: x @ w + b[None], args, kc)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-4), got, want)


def test_project_and_merge_heads_equal_split_and_concat(key):
    kx, kw, kv, kb, kc = jax.random.split(key, 5)
    x, w = jax.random.normal(kx, (70, 24)), jax.random.normal(kw, (24, 3 * 2 * 8))

    def plain(x, w):
        return tuple(jnp.split(x @ w, 6, axis=1))

    got, want = _vjp_pair(lambda x, w: F.project_heads(x, w, 8), plain, (x, w), kc)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-4), got, want)

    parts = tuple(jax.random.normal(k, (70, 8)) for k in jax.random.split(kv, 3))
    wo, bo = jax.random.normal(kw, (24, 20)), jax.random.normal(kb, (20,))
    got, want = _vjp_pair(F.merge_heads, lambda p, w, b: jnp.concatenate(p, 1) @ w + b[None],
                          (parts, wo, bo), kc)  # fmt: skip
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-4), got, want)


def _flax_layer_norm(x, s, b):
    m = x.mean(-1, keepdims=True)
    v = jnp.maximum((x * x).mean(-1, keepdims=True) - m * m, 0.0)
    return (x - m) * jax.lax.rsqrt(v + 1e-5) * s[None, None] + b[None, None]


def test_head_shapes_that_do_not_fit_are_refused():
    x = jnp.ones((4, 6))
    with pytest.raises(ValueError, match="12 columns are not blocks of 5"):
        F.project_heads(x, jnp.ones((6, 12)), 5)
    with pytest.raises(ValueError, match=r"2 blocks of 3 need w with 6 rows, got \(5, 7\)"):
        F.merge_heads((x[:, :3], x[:, 3:]), jnp.ones((5, 7)), jnp.ones((7,)))


def test_layer_norm_equals_flax_and_its_gradient_autodiff(key):
    from flax import nnx

    kx, ks, kc = jax.random.split(key, 3)
    ln = nnx.LayerNorm(40, epsilon=1e-5, rngs=nnx.Rngs(0))
    ln.scale[...] = scale = 1.0 + 0.3 * jax.random.normal(ks, (40,))
    ln.bias[...] = bias = jnp.linspace(-1.0, 1.0, 40)
    x = 3.0 * jax.random.normal(kx, (2, 9, 40)) + 5.0  # an offset the mean must remove
    with jax.numpy_rank_promotion("allow"):  # flax broadcasts [C] against [B, N, C]
        want = ln(x)
    np.testing.assert_allclose(F.layer_norm(x, scale, bias, 1e-5), want, rtol=1e-5, atol=1e-5)
    fast = lambda *a: F.layer_norm(*a, 1e-5)
    got, want = _vjp_pair(fast, _flax_layer_norm, (x, scale, bias), kc)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), got, want)


def test_hand_written_gradients_match_finite_differences_in_float64(key):
    with jax.enable_x64(True):
        ks = jax.random.split(key, 6)
        x = jax.random.normal(ks[0], (6, 5), jnp.float64)
        w = jax.random.normal(ks[1], (5, 3), jnp.float64)
        b = jax.random.normal(ks[2], (3,), jnp.float64)
        check_grads(F.dense, (x, w, b), order=1, modes=("rev",))  # N < K: (gᵀ x)ᵀ
        check_grads(F.dense, (x[:, :2], w[:2], b), order=1, modes=("rev",))  # N > K: xᵀ g
        wh = jax.random.normal(ks[3], (5, 4), jnp.float64)
        check_grads(lambda x, w: F.project_heads(x, w, 2), (x, wh), order=1, modes=("rev",))
        parts = (x[:, :2], x[:, 2:4])
        check_grads(F.merge_heads, (parts, wh[:4], wh[4]), order=1, modes=("rev",))
        s, c = jax.random.normal(ks[4], (5,), jnp.float64), jax.random.normal(ks[5], (5,))
        check_grads(lambda x, s, c: F.layer_norm(x, s, c, 1e-5), (x, s, c.astype(jnp.float64)),
                    order=1, modes=("rev",))  # fmt: skip


def test_keep_host_memory_stops_xla_page_faulting_its_temporaries_every_call(tmp_path):
    """A jitted function with a 64 MB temporary (a [4096, 4096] matmul result): with glibc's
    defaults every call maps it afresh (a page fault per 4 KiB page); after keep_host_memory()
    the next calls reuse it."""
    script = textwrap.dedent("""
        import resource, sys
        from jaxgrad.training.xla import keep_host_memory
        if sys.argv[1] == "keep":
            assert keep_host_memory()
        import jax, jax.numpy as jnp
        f = jax.jit(lambda a, w: ((a @ a.T) @ w).sum())
        a, w = jnp.full((4096, 32), 1e-3), jnp.ones((4096, 8))
        for _ in range(3):
            f(a, w).block_until_ready()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            f(a, w).block_until_ready()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
    """)
    path = tmp_path / "faults.py"
    path.write_text(script)

    def faults(mode):
        out = subprocess.run([sys.executable, str(path), mode], capture_output=True, text=True,
                             env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
                                  "PYTHONPATH": ":".join(sys.path)}, check=True)  # fmt: skip
        return float(out.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default > 10_000  # 64 MB = 16,384 pages, mapped again on every call
    assert kept < 500


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_a_dropout_rate_outside_0_1_is_refused(rate, key):
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        F.dropout(jnp.ones((2, 3)), rate, key)


def test_the_malloc_setting_is_named_or_refused(monkeypatch):
    from jaxgrad.errors import ConfigError
    from jaxgrad.training.xla import MALLOC_ENV, keep_host_memory

    monkeypatch.setenv(MALLOC_ENV, "system")
    assert keep_host_memory() is False  # glibc left as it is
    monkeypatch.setenv(MALLOC_ENV, "tcmalloc")
    with pytest.raises(ConfigError, match="JAXGRAD_MALLOC='tcmalloc': use 'keep'"):
        keep_host_memory()
