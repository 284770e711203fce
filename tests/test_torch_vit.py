"""PyTorch parity: experiments._support.torch_vit (vit-pytorch line by line) vs the flax ViT.

Weights go torch → flax through ``jaxgrad.port.vit_convert`` (the same path a user's
``torch.save(model.state_dict())`` takes); logits and gradients must agree in eval mode.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments._support.torch_vit import from_vit_config
from jaxgrad.models import ViT, ViTConfig, count_params
from jaxgrad.port.vit_convert import from_torch_state_dict, load_torch_state_dict

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[torch]'")

CFG = ViTConfig(dim=32, depth=2, heads=2, dim_head=16, mlp_dim=48)


def _pair(cfg, seed=0):
    torch.manual_seed(seed)
    tm = from_vit_config(cfg).eval()
    model = nnx.eval_shape(lambda: ViT(cfg, rngs=nnx.Rngs(0)))  # values come from torch
    load_torch_state_dict(model, tm.state_dict())
    return tm, model


def _images(n=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 32, 32, 3)).astype(np.float32)


def test_seed_config_parameter_count_matches_torch():
    tm = from_vit_config(ViTConfig.seed())
    assert sum(p.numel() for p in tm.parameters()) == 12_673_642
    model = nnx.eval_shape(lambda: ViT(ViTConfig.seed(), rngs=nnx.Rngs(0)))
    assert count_params(nnx.state(model, nnx.Param)) == 12_673_642


def test_state_dict_keys_are_vit_pytorchs():
    sd = from_vit_config(dataclasses.replace(CFG, depth=1)).state_dict()
    assert list(sd) == [
        "cls_token", "pos_embedding",
        "to_patch_embedding.1.weight", "to_patch_embedding.1.bias",
        "to_patch_embedding.2.weight", "to_patch_embedding.2.bias",
        "to_patch_embedding.3.weight", "to_patch_embedding.3.bias",
        "transformer.norm.weight", "transformer.norm.bias",
        "transformer.layers.0.0.norm.weight", "transformer.layers.0.0.norm.bias",
        "transformer.layers.0.0.to_qkv.weight",
        "transformer.layers.0.0.to_out.0.weight", "transformer.layers.0.0.to_out.0.bias",
        "transformer.layers.0.1.net.0.weight", "transformer.layers.0.1.net.0.bias",
        "transformer.layers.0.1.net.1.weight", "transformer.layers.0.1.net.1.bias",
        "transformer.layers.0.1.net.4.weight", "transformer.layers.0.1.net.4.bias",
        "mlp_head.weight", "mlp_head.bias",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "cfg",
    [CFG, ViTConfig(dim=16, depth=1, heads=1, dim_head=16, mlp_dim=24)],
    ids=["proj", "no-proj"],
)
def test_logits_match_torch(cfg):
    tm, model = _pair(cfg)
    x = _images()
    with torch.no_grad():
        t_logits = tm(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()  # torch is NCHW
    logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x))
    np.testing.assert_allclose(logits, t_logits, rtol=1e-4, atol=1e-5)


def test_loss_gradients_match_torch():
    tm, model = _pair(CFG, seed=1)
    x, y = _images(seed=1), np.array([0, 3, 9, 3])
    loss = torch.nn.functional.cross_entropy(
        tm(torch.from_numpy(x).permute(0, 3, 1, 2)), torch.from_numpy(y)
    )
    loss.backward()
    t_grads = from_torch_state_dict({k: p.grad for k, p in tm.named_parameters()}, CFG)

    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def loss_fn(params):
        logits = nnx.merge(graphdef, params)(jnp.asarray(x))
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()

    value, grads = jax.value_and_grad(loss_fn)(params)
    np.testing.assert_allclose(value, loss.item(), rtol=1e-5)
    jax.tree.map(
        lambda g, t: np.testing.assert_allclose(g, t, rtol=1e-3, atol=2e-5),
        nnx.to_pure_dict(grads),
        t_grads,
    )


def test_a_saved_torch_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    tm = from_vit_config(CFG).eval()
    torch.save(tm.state_dict(), tmp_path / "vit_model.pth")  # the seed's last line
    sd = torch.load(tmp_path / "vit_model.pth", map_location="cpu")
    model = nnx.eval_shape(lambda: ViT(CFG, rngs=nnx.Rngs(0)))
    load_torch_state_dict(model, sd)
    np.testing.assert_array_equal(
        model.layers[1].attn.to_qkv.kernel[...],
        sd["transformer.layers.1.0.to_qkv.weight"].numpy().T,
    )


# ---- vit-pytorch's pool (issue 13 item 10): same keys for 'cls' and 'mean', so the config rules


MEAN = dataclasses.replace(CFG, pool="mean")


def test_pool_mean_converts_and_matches_torch_layer_by_layer():
    from jaxgrad.port import compare_layers
    from jaxgrad.port.vit_convert import rules

    tm, model = _pair(MEAN, seed=3)
    x = _images(seed=3)
    y = torch.tensor([1, 2, 3, 4])
    report = compare_layers(
        tm, model, [x.transpose(0, 3, 1, 2)], nnx_inputs=[x], rules=rules(MEAN),
        torch_loss=lambda o: torch.nn.functional.cross_entropy(o, y),
        nnx_loss=lambda o: optax.softmax_cross_entropy_with_integer_labels(o, jnp.asarray(y)).mean(),
        print_table=False,
    )  # fmt: skip
    assert report.first_bad is None and report.first_bad_param is None
    assert report.rows[-1][0] == "(ViT)"  # the logits are compared too
    # the same weights read as pool='cls' give other logits: the field matters
    _, as_cls = _pair(CFG, seed=3)
    with torch.no_grad():
        t_logits = tm(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(np.asarray(as_cls(jnp.asarray(x))) - t_logits).max() > 1e-2


def test_converter_needs_the_config_beside_the_weights(tmp_path):
    from jaxgrad.port.vit_convert import load_checkpoint

    torch.manual_seed(0)
    tm = from_vit_config(MEAN).eval()
    torch.save(tm.state_dict(), tmp_path / "vit_model.pth")
    with pytest.raises(FileNotFoundError, match=r"vit_config.json: not found.*pool"):
        load_checkpoint(tmp_path / "vit_model.pth")
    fields = {k: getattr(MEAN, k) for k in ("image_size", "patch_size", "num_classes", "dim",
                                            "depth", "heads", "mlp_dim", "dim_head")}  # fmt: skip
    (tmp_path / "vit_config.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match=r"vit_config.json: missing fields \['pool'\]"):
        load_checkpoint(tmp_path / "vit_model.pth")
    (tmp_path / "vit_config.json").write_text(json.dumps({**fields, "pool": "mean"}))
    model = load_checkpoint(tmp_path / "vit_model.pth")
    assert model.cfg.pool == "mean"
    x = _images(seed=4)
    with torch.no_grad():
        want = tm(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(model(jnp.asarray(x)), want, rtol=1e-4, atol=1e-5)


def test_converter_errors_name_the_field_that_differs():
    sd = from_vit_config(CFG).state_dict()
    with pytest.raises(
        ValueError, match=r"(?s)mlp_head.weight.*differ from the torch model's: num_classes;"
    ):
        from_torch_state_dict(sd, dataclasses.replace(CFG, num_classes=7))
    with pytest.raises(
        ValueError, match=r"(?s)net.1.weight.*differ from the torch model's: mlp_dim;"
    ):
        from_torch_state_dict(sd, dataclasses.replace(CFG, mlp_dim=40))
    # newer vit-pytorch: pool='mean' keeps no class token (cls_token [0, dim], n positions)
    newer = dict(sd, cls_token=torch.zeros(0, CFG.dim), pos_embedding=torch.zeros(64, CFG.dim))
    with pytest.raises(ValueError, match=r"cls_token has no class token.*pool='mean'"):
        from_torch_state_dict(newer, MEAN)
