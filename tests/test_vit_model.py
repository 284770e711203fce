"""The flax ViT: vit-pytorch's parameter count, shapes, init, errors, attention, conversion.

One tiny model per module (compiling initializers is the slow part on a loaded CPU).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgrad.models import ViT, ViTConfig, count_params
from jaxgrad.port.vit_convert import from_torch_state_dict, to_torch_state_dict
from jaxgrad.training.loop import init_params

CFG = ViTConfig.tiny()


@pytest.fixture(scope="module")
def model():
    graphdef, params, rest = init_params(ViT, CFG, jax.random.key(0))
    return nnx.merge(graphdef, params, rest)


def _params(model):
    return nnx.state(model, nnx.Param)


def _expected_count(c: ViTConfig) -> int:
    """vit-pytorch's parameter count, by hand from the architecture."""
    inner = c.heads * c.dim_head
    patch = 2 * c.patch_dim + c.patch_dim * c.dim + c.dim + 2 * c.dim
    attn = 2 * c.dim + c.dim * 3 * inner + inner * c.dim + c.dim
    ff = 2 * c.dim + c.dim * c.mlp_dim + c.mlp_dim + c.mlp_dim * c.dim + c.dim
    tokens = c.dim + (c.num_patches + 1) * c.dim
    head = 2 * c.dim + c.dim * c.num_classes + c.num_classes
    return patch + tokens + c.depth * (attn + ff) + head


def test_seed_config_has_vit_pytorch_parameter_count():
    model = nnx.eval_shape(lambda: ViT(ViTConfig.seed(), rngs=nnx.Rngs(0)))
    assert count_params(_params(model)) == 12_673_642
    assert _expected_count(ViTConfig.seed()) == 12_673_642


@pytest.mark.parametrize(
    "cfg", [CFG, ViTConfig(dim=24, depth=1, heads=3, dim_head=8, mlp_dim=40, patch_size=8)]
)
def test_other_configs_match_hand_count(cfg):
    model = nnx.eval_shape(lambda: ViT(cfg, rngs=nnx.Rngs(0)))
    assert count_params(_params(model)) == _expected_count(cfg)


def test_jitted_init_builds_the_constructors_tree(model):
    a = nnx.eval_shape(lambda: ViT(CFG, rngs=nnx.Rngs(params=jax.random.key(1))))
    assert jax.tree.structure(_params(a)) == jax.tree.structure(_params(model))
    assert not nnx.state(model, nnx.Not(nnx.Param))  # no RNG state: params are everything


@pytest.fixture(scope="module")
def x4():
    return jax.random.normal(jax.random.key(42), (4, 32, 32, 3))


@pytest.fixture(scope="module")
def outputs(model, x4):
    """One compiled forward: eval logits, embedding, logits of the batch in reverse order."""
    return nnx.jit(lambda m, x: (m(x), m.embed(x), m(x[::-1])))(model, x4)


def test_output_shapes_and_images_do_not_mix_across_the_batch(outputs):
    logits, emb, reversed_logits = outputs
    assert logits.shape == (4, 10) and logits.dtype == jnp.float32
    assert emb.shape == (4, CFG.dim)
    # each image's logits depend on that image only: reversing the batch reverses the rows
    np.testing.assert_allclose(reversed_logits, logits[::-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits[0], logits[1])  # ...and the images do differ


def test_bf16_compute_keeps_float32_params_and_logits(model, x4, outputs):
    m16 = nnx.eval_shape(lambda: ViT(dataclasses.replace(CFG, dtype="bfloat16"), rngs=nnx.Rngs(0)))
    nnx.update(m16, _params(model))  # same weights, bf16 compute
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_params(m16)))
    fwd = nnx.jit(lambda m, x, k: (m(x), m(x, deterministic=False, rngs=k)))
    out16, train16 = fwd(m16, x4, jax.random.key(0))
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, outputs[0], atol=0.1)  # lower precision: close, not equal
    assert not np.array_equal(out16, outputs[0])
    assert np.isfinite(train16).all()  # the dropout / explicit-attention path runs in bf16


def test_torch_like_init(model):
    k, b = model.layers[0].ff.fc1.kernel[...], model.layers[0].ff.fc1.bias[...]
    bound = 1 / math.sqrt(CFG.dim)
    assert 0.9 * bound < np.abs(k).max() <= bound  # kaiming_uniform(a=√5) = U(±1/√fan_in)
    assert np.abs(b).max() <= bound and np.abs(b).std() > 0  # uniform bias, not zeros
    assert abs(float(model.pos_embedding[...].std()) - 1.0) < 0.1  # torch.randn, std 1
    assert model.norm.epsilon == 1e-5 and model.patch_norm_in.epsilon == 1e-5


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\]"):
        model(jnp.zeros((2, 3, 32, 32)))
    with pytest.raises(ValueError, match="normalize"):
        model(jnp.zeros((2, 32, 32, 3), jnp.uint8))
    with pytest.raises(ValueError, match="rngs"):
        model(jnp.zeros((2, 32, 32, 3)), deterministic=False)
    with pytest.raises(ValueError, match="divisible"):
        ViTConfig(image_size=30)
    with pytest.raises(ValueError, match="dtype"):
        ViTConfig(dtype="float16")


def test_dropout_is_keyed_and_off_in_eval(model, x4, outputs):
    run = nnx.jit(lambda m, x, k: (m(x, deterministic=False, rngs=k), m(x, rngs=k)))
    a, eval_with_key = run(model, x4, jax.random.key(1))
    b, _ = run(model, x4, jax.random.key(1))
    c, _ = run(model, x4, jax.random.key(2))
    np.testing.assert_array_equal(a, b)  # same key, same masks
    assert not np.allclose(a, c)
    np.testing.assert_allclose(eval_with_key, outputs[0], rtol=1e-6, atol=1e-6)  # no dropout


def test_fused_attention_matches_explicit_softmax(model, key):
    attn = model.layers[0].attn
    x = jax.random.normal(key, (2, 5, CFG.dim))

    @nnx.jit
    def both(attn, x):
        qkv = attn.to_qkv(attn.norm(x)).reshape(2, 5, 3, CFG.heads, CFG.dim_head)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [B, h, N, d]
        p = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) * CFG.dim_head**-0.5, axis=-1)
        ref = attn.to_out((p @ v).transpose(0, 2, 1, 3).reshape(2, 5, -1))
        return attn(x, deterministic=True, rngs=None), ref

    np.testing.assert_allclose(*both(attn, x), atol=1e-5)


def test_split_merge_eager_matches_jit(model, x4, outputs):
    graphdef, params = nnx.split(model, nnx.Param)
    with jax.disable_jit():
        eager = nnx.merge(graphdef, params)(x4)
    np.testing.assert_allclose(eager, outputs[0], rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_and_key_names(model):
    params = _params(model)
    sd = to_torch_state_dict(params, CFG)
    assert sd["to_patch_embedding.2.weight"].shape == (CFG.dim, CFG.patch_dim)  # [out, in]
    assert sd["transformer.layers.1.0.to_qkv.weight"].shape == (3 * 2 * 16, CFG.dim)
    assert sd["cls_token"].shape == (1, 1, CFG.dim)
    for k in ("transformer.layers.0.1.net.4.bias", "transformer.norm.weight", "mlp_head.bias"):
        assert k in sd
    back = from_torch_state_dict({"module." + k: v for k, v in sd.items()}, CFG)
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(params), back)
    assert len(sd) == len(jax.tree.leaves(params))


def test_state_dict_errors_name_the_problem(model):
    sd = to_torch_state_dict(_params(model), CFG)
    bad = dict(sd)
    del bad["mlp_head.bias"]
    with pytest.raises(ValueError, match=r"unfilled params \(1\): mlp_head.bias"):
        from_torch_state_dict(bad, CFG)
    with pytest.raises(ValueError, match="mlp_dim"):
        from_torch_state_dict(sd, dataclasses.replace(CFG, mlp_dim=32))


def test_pool_is_validated_and_mean_averages_every_token(model):
    with pytest.raises(ValueError, match="ViTConfig.pool must be 'cls' or 'mean'"):
        ViTConfig(pool="max")
    mean_graphdef = init_params(ViT, dataclasses.replace(CFG, pool="mean"), jax.random.key(0))[0]
    mean = nnx.merge(mean_graphdef, nnx.state(model))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    # one token in place of the mean: the final LayerNorm's outputs, by hand
    tokens = []
    orig = type(model.norm).__call__

    def spy(self, y):
        out = orig(self, y)
        if self is mean.norm:
            tokens.append(out)
        return out

    type(model.norm).__call__ = spy
    try:
        pooled = mean.embed(x)
    finally:
        type(model.norm).__call__ = orig
    np.testing.assert_allclose(pooled, tokens[0].mean(axis=1), rtol=1e-6, atol=1e-6)
    assert np.abs(pooled - model.embed(x)).max() > 1e-2  # cls pooling is something else


def test_attn_dropout_off_drops_only_the_projection(model):
    """``attn_dropout=False``: training-mode attention is the exact softmax(q kᵀ/√d) v, then
    the output projection, then one Dropout (the first draw of the same dropout stream)."""
    attn = model.layers[0].attn
    x = jax.random.normal(jax.random.key(3), (2, CFG.num_patches + 1, CFG.dim))
    key = jax.random.key(7)
    off = nnx.merge(*nnx.split(ViT(dataclasses.replace(CFG, attn_dropout=False), rngs=nnx.Rngs(0))))
    nnx.update(off, nnx.state(model, nnx.Param))  # the same weights
    got = off.layers[0].attn(x, deterministic=False, rngs=nnx.Rngs(dropout=key))
    b, n, _ = x.shape
    qkv = attn.to_qkv(attn.norm(x)).reshape(b, n, 3, CFG.heads, CFG.dim_head)
    q, k, v = (qkv[:, :, i] for i in range(3))
    p = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(CFG.dim_head), axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, n, -1)
    want = nnx.Dropout(CFG.dropout)(attn.to_out(o), deterministic=False, rngs=nnx.Rngs(dropout=key))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # vit-pytorch's default (probabilities dropped too) is a different training-mode function
    seed_like = attn(x, deterministic=False, rngs=nnx.Rngs(dropout=key))
    assert not np.allclose(seed_like, got, atol=1e-3)


def test_training_attention_is_vit_pytorchs_in_its_own_layout(model):
    """The head-major training path (one projection viewed [dim, 3, heads, dim_head]) is
    vit-pytorch's ``chunk(3)`` + ``b n (h d) -> b h n d`` attention with dropout on the
    probabilities and then on the projection, in that order of the same dropout stream."""
    attn = model.layers[0].attn
    x = jax.random.normal(jax.random.key(4), (2, CFG.num_patches + 1, CFG.dim))
    key = jax.random.key(8)
    got = attn(x, deterministic=False, rngs=nnx.Rngs(dropout=key))
    b, n, _ = x.shape
    q, k, v = jnp.split(attn.to_qkv(attn.norm(x)), 3, axis=-1)  # torch's chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, CFG.heads, CFG.dim_head).transpose(0, 2, 1, 3) for t in (q, k, v))
    p = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) * CFG.dim_head**-0.5, axis=-1)
    rngs = nnx.Rngs(dropout=key)
    p = nnx.Dropout(CFG.dropout)(p, deterministic=False, rngs=rngs)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(b, n, -1)  # b h n d -> b n (h d)
    want = nnx.Dropout(CFG.dropout)(attn.to_out(o), deterministic=False, rngs=rngs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_attention_implementation_choice():
    assert ViTConfig().attention_implementation() is None  # float32: XLA's, numerics unchanged
    bf16 = ViTConfig(dtype="bfloat16")
    want = "cudnn" if jax.default_backend() == "gpu" else None
    assert bf16.attention_implementation() == want
    assert dataclasses.replace(bf16, dim_head=12).attention_implementation() is None
    assert dataclasses.replace(bf16, attention="xla").attention_implementation() is None
    assert dataclasses.replace(bf16, attention="cudnn").attention_implementation() == "cudnn"
    with pytest.raises(ValueError, match="attention='cudnn' needs dtype='bfloat16'"):
        ViTConfig(attention="cudnn")
    with pytest.raises(ValueError, match="ViTConfig.attention must be"):
        ViTConfig(attention="flash")


def _with_layout(model, layout, **changes):
    other = ViT(dataclasses.replace(CFG, layout=layout, **changes), rngs=nnx.Rngs(1))
    nnx.update(other, nnx.state(model, nnx.Param))  # the same weights
    return other


@pytest.mark.parametrize("changes", [{}, {"attn_dropout": False}, {"pool": "mean"}])
def test_heads_and_packed_layouts_are_one_function_with_the_same_masks(model, key, changes):
    """The CPU layout (per-head blocks, hand-written backward) and the GPU/TPU layout (one qkv
    matmul, [B, h, N, N] attention) give the same logits, the same training-mode outputs for
    the same key (every dropout mask equal), and the same gradients."""
    heads, packed = (
        _with_layout(model, "heads", **changes),
        _with_layout(model, "packed", **changes),
    )
    x = jax.random.normal(key, (3, 32, 32, 3))
    dkey = jax.random.key(5)

    def loss(params, graphdef, train):
        m = nnx.merge(graphdef, params)
        out = m(x, deterministic=not train, rngs=dkey if train else None)
        return (out * jnp.arange(1.0, CFG.num_classes + 1)[None]).sum()

    for train in (False, True):
        got = [jax.value_and_grad(loss)(nnx.state(m, nnx.Param), nnx.graphdef(m), train)
               for m in (heads, packed)]  # fmt: skip
        np.testing.assert_allclose(got[0][0], got[1][0], rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                     got[0][1], got[1][1])  # fmt: skip
    # the training-mode function is not the eval one (the masks are really applied)
    assert not np.isclose(loss(nnx.state(heads, nnx.Param), nnx.graphdef(heads), True),
                          loss(nnx.state(heads, nnx.Param), nnx.graphdef(heads), False))  # fmt: skip


def test_layout_auto_is_heads_on_cpu_and_is_validated():
    assert ViTConfig().resolved_layout() == (
        "heads" if jax.default_backend() == "cpu" else "packed"
    )
    assert ViTConfig(layout="packed").resolved_layout() == "packed"
    with pytest.raises(ValueError, match="ViTConfig.layout must be"):
        ViTConfig(layout="fast")
