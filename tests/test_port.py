"""jaxgrad.port without torch: rule templates, layouts (index by index), round trips, and every
problem of a state_dict reported at once."""

import numpy as np
import pytest
from flax import nnx

from jaxgrad.models.mha import MultiheadAttention
from jaxgrad.port import PortError, Rule, convert, export, load_state_dict, mha_rules
from jaxgrad.port.hf_clip import CLIPVisionConfig, CLIPVisionTower, rules


@pytest.fixture(scope="module")
def tower():
    return CLIPVisionTower(CLIPVisionConfig.tiny(), rngs=nnx.Rngs(0))


def test_layouts_move_each_element_where_torch_has_it(tower):
    sd = export(tower, rules())
    w = sd["vision_model.embeddings.patch_embedding.weight"]  # torch conv [O, I, kh, kw]
    k = np.asarray(tower.embeddings.patch_embedding.kernel[...])  # flax conv [kh, kw, I, O]
    assert w.shape == (32, 3, 8, 8) and k.shape == (8, 8, 3, 32)
    assert w[5, 2, 1, 7] == k[1, 7, 2, 5]
    fc1 = sd["vision_model.encoder.layers.1.mlp.fc1.weight"]  # torch Linear [out, in]
    assert fc1.shape == (37, 32)
    assert fc1[30, 4] == np.asarray(tower.encoder.layers[1].mlp.fc1.kernel[...])[4, 30]
    assert "vision_model.encoder.layers.1.layer_norm2.weight" in sd  # LayerNorm scale -> weight


def test_convert_inverts_export(tower):
    sd = export(tower, rules())
    back = convert(sd, rules(), tower)
    fresh = CLIPVisionTower(CLIPVisionConfig.tiny(), rngs=nnx.Rngs(1))
    load_state_dict(fresh, sd, rules())
    for a, b in zip(
        nnx.state(tower, nnx.Param).flat_state(), nnx.state(fresh, nnx.Param).flat_state()
    ):
        np.testing.assert_array_equal(a[1][...], b[1][...])
    assert back["encoder"]["layers"][0]["mlp"]["fc2"]["bias"].shape == (32,)


def test_every_problem_is_reported_together_and_nothing_is_loaded(tower):
    sd = export(tower, rules())
    del sd["vision_model.post_layernorm.bias"]  # missing
    sd["vision_model.encoder.layers.0.mlp.fc1.weight"] = np.zeros((36, 32))  # mis-shaped
    sd["vision_model.embeddings.position_ids"] = np.arange(17)  # a buffer, not a param
    before = np.asarray(tower.encoder.layers[0].mlp.fc1.kernel[...]).copy()
    with pytest.raises(PortError) as e:
        load_state_dict(tower, sd, rules(), source="ckpt.safetensors")
    msg = str(e.value)
    assert msg.startswith("ckpt.safetensors does not fit CLIPVisionTower")
    assert e.value.unfilled == ["post_layernorm.bias"]
    assert e.value.unmapped == ["vision_model.embeddings.position_ids"]
    assert e.value.mismatched == [
        ("vision_model.encoder.layers.0.mlp.fc1.weight", (36, 32),
         "encoder.layers.0.mlp.fc1.kernel", (32, 37)),
    ]  # fmt: skip
    np.testing.assert_array_equal(tower.encoder.layers[0].mlp.fc1.kernel[...], before)
    # an ignore pattern takes the buffer out; the other two problems remain
    with pytest.raises(PortError) as e:
        convert(sd, rules(), tower, ignore=[r".*position_ids\Z"])
    assert e.value.unmapped == [] and e.value.unfilled == ["post_layernorm.bias"]


def test_template_placeholders_match_whole_indices_only(tower):
    sd = export(tower, rules())
    sd["vision_model.encoder.layers.x.mlp.fc1.bias"] = sd[
        "vision_model.encoder.layers.0.mlp.fc1.bias"
    ]
    with pytest.raises(PortError) as e:
        convert(sd, rules(), tower)
    assert e.value.unmapped == ["vision_model.encoder.layers.x.mlp.fc1.bias"]
    two = [*rules(), Rule("extra.bias", "post_layernorm.bias")]
    sd["extra.bias"] = sd.pop("vision_model.encoder.layers.x.mlp.fc1.bias")[:32]
    with pytest.raises(
        PortError, match=r"filled twice: post_layernorm.bias from .* and extra.bias"
    ):
        convert(sd, two, tower)


class _Attentions(nnx.Module):
    """Two NNX attentions with separate q/k/v, as ``layers[i]``."""

    def __init__(self, *, rngs):
        self.layers = nnx.List([MultiheadAttention(8, 2, rngs=rngs) for _ in range(2)])


def _fused_state_dict(seed=0, rows=24):
    """torch's nn.MultiheadAttention(8, 2) layout at ``blocks.{i}.attn``, random numbers."""
    rng = np.random.default_rng(seed)
    sd = {}
    for i in range(2):
        a = f"blocks.{i}.attn"
        sd[f"{a}.in_proj_weight"] = rng.normal(size=(rows, 8)).astype(np.float32)
        sd[f"{a}.in_proj_bias"] = rng.normal(size=(rows,)).astype(np.float32)
        sd[f"{a}.out_proj.weight"] = rng.normal(size=(8, 8)).astype(np.float32)
        sd[f"{a}.out_proj.bias"] = rng.normal(size=(8,)).astype(np.float32)
    return sd


def test_fused_in_proj_splits_into_q_k_v_in_torch_order_and_exports_back():
    model = _Attentions(rngs=nnx.Rngs(0))
    rules = mha_rules("blocks.{i}.attn", "layers.{i}")
    sd = _fused_state_dict()
    load_state_dict(model, sd, rules)
    w, b = sd["blocks.1.attn.in_proj_weight"], sd["blocks.1.attn.in_proj_bias"]
    attn = model.layers[1]
    for part, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
        rows = slice(8 * part, 8 * part + 8)  # [W_q; W_k; W_v], each [out, in] -> kernel [in, out]
        np.testing.assert_array_equal(proj.kernel[...], w[rows].T)
        np.testing.assert_array_equal(proj.bias[...], b[rows])
    np.testing.assert_array_equal(attn.out_proj.kernel[...], sd["blocks.1.attn.out_proj.weight"].T)
    back = export(model, rules)
    assert sorted(back) == sorted(sd)  # one fused key again per tensor, no q/k/v keys
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])


def test_fused_tensor_of_the_wrong_size_is_reported_with_its_parts():
    model = _Attentions(rngs=nnx.Rngs(0))
    before = np.asarray(model.layers[0].q_proj.kernel[...]).copy()
    sd = _fused_state_dict()
    sd["blocks.0.attn.in_proj_weight"] = sd["blocks.0.attn.in_proj_weight"][:23]  # 23 != 3 x 8
    with pytest.raises(PortError) as e:
        load_state_dict(model, sd, mha_rules("blocks.{i}.attn", "layers.{i}"))
    ((key, shape, paths, targets),) = e.value.mismatched
    assert (key, shape) == ("blocks.0.attn.in_proj_weight", (23, 8))
    assert paths == "layers.0.q_proj.kernel + layers.0.k_proj.kernel + layers.0.v_proj.kernel"
    assert targets == "(8, 8) + (8, 8) + (8, 8)"
    assert e.value.unfilled == []  # the three parts are reported once, as the mismatch
    np.testing.assert_array_equal(model.layers[0].q_proj.kernel[...], before)


def test_export_of_a_fused_key_needs_every_part():
    model = _Attentions(rngs=nnx.Rngs(0))
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    del pure["layers"][1]["v_proj"]
    with pytest.raises(PortError, match=r"blocks.1.attn.in_proj_weight \(no param for its parts"):
        export(pure, mha_rules("blocks.{i}.attn", "layers.{i}"))
