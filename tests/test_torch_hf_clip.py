"""transformers' CLIP image tower vs jaxgrad.port.hf_clip: a random-initialised checkpoint saved
with ``save_pretrained`` loads without torch and gives the same embeddings and gradients."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgrad.data.clip_preprocess import clip_preprocess
from jaxgrad.losses.contrastive import clip_loss
from jaxgrad.models.clip import l2_normalize
from jaxgrad.port import PortError, compare_layers, convert
from jaxgrad.port.hf_clip import CLIPVisionConfig, load_pretrained, rules

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[torch]'")
T = pytest.importorskip(
    "transformers", reason="transformers is not installed: pip install -e '.[torch]'"
)
safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed")

# a vision_config.projection_dim that differs from CLIPModel's own: CLIPModel projects with the
# top-level one, and a loader that read the vision one would build the wrong projection
VISION = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    image_size=32, patch_size=8, projection_dim=40,
)  # fmt: skip
TEXT = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2)


def _pixels(n=4, seed=0, size=32):
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = T.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=24)
    model = T.CLIPModel(cfg).eval()
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    torch.manual_seed(1)
    model = T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(**VISION)).eval()
    path = tmp_path_factory.mktemp("clipv")
    model.save_pretrained(path)
    return path, model


def _image_features(model, x):
    with torch.no_grad():
        if isinstance(model, T.CLIPModel):
            out = model.get_image_features(pixel_values=torch.from_numpy(x))
            return getattr(out, "pooler_output", out).numpy()  # a tensor before transformers 5
        return model(pixel_values=torch.from_numpy(x)).image_embeds.numpy()


@pytest.mark.parametrize("which", ["clip_dir", "vision_dir"])
def test_embeddings_equal_get_image_features(which, request):
    path, tm = request.getfixturevalue(which)
    tower = load_pretrained(path)
    x = _pixels()
    want = _image_features(tm, x)
    got = nnx.jit(lambda m, x: m(x))(tower, jnp.asarray(x))
    assert got.shape == want.shape == (4, 24 if which == "clip_dir" else 40)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_contrastive_loss_gradients_equal_torchs(clip_dir):
    path, tm = clip_dir
    tower = load_pretrained(path)
    x = _pixels(seed=2)
    text = np.random.default_rng(3).normal(size=(4, 24)).astype(np.float32)
    scale = float(np.log(10.0))

    tm.zero_grad(set_to_none=True)
    img = tm.get_image_features(pixel_values=torch.from_numpy(x))
    img = getattr(img, "pooler_output", img)
    img = img / img.norm(dim=-1, keepdim=True)
    txt = torch.nn.functional.normalize(torch.from_numpy(text), dim=-1)
    logits = np.exp(scale) * img @ txt.T
    labels = torch.arange(4)
    t_loss = (
        torch.nn.functional.cross_entropy(logits, labels)
        + torch.nn.functional.cross_entropy(logits.T, labels)
    ) / 2
    t_loss.backward()
    t_grads = {k: p.grad for k, p in tm.named_parameters() if k.startswith(("vision", "visual"))}
    want = convert(t_grads, rules(), tower)

    graphdef, params = nnx.split(tower, nnx.Param)

    @jax.jit
    def loss_fn(params):
        feats = l2_normalize(nnx.merge(graphdef, params)(jnp.asarray(x)), eps=0.0)
        return clip_loss(
            image_features=feats,
            text_features=l2_normalize(jnp.asarray(text), eps=0.0),
            logit_scale=jnp.float32(scale),
        )[0]

    value, grads = jax.value_and_grad(loss_fn)(params)
    np.testing.assert_allclose(value, t_loss.item(), rtol=1e-5)
    got = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]
    ref = dict(jax.tree_util.tree_flatten_with_path(want)[0])
    assert len(got) == len(ref) == len(list(tower_params(tower)))
    for p, g in got:
        np.testing.assert_allclose(g, ref[p], atol=1e-4, rtol=0, err_msg=jax.tree_util.keystr(p))


def tower_params(tower):
    return jax.tree.leaves(nnx.state(tower, nnx.Param))


@pytest.mark.slow  # ~10 s alone: an 88M-parameter torch init, save and load
def test_vit_b32_shape_loads_and_matches(tmp_path):
    torch.manual_seed(0)
    tm = T.CLIPVisionModelWithProjection(T.CLIPVisionConfig()).eval()  # ViT-B/32, random init
    assert sum(p.numel() for p in tm.parameters()) == 87_849_216
    tm.save_pretrained(tmp_path)
    tower = load_pretrained(tmp_path)
    assert tower.cfg == CLIPVisionConfig.vit_b32()
    assert sum(int(p.size) for p in tower_params(tower)) == 87_849_216
    x = _pixels(n=2, size=224)
    got = nnx.jit(lambda m, x: m(x))(tower, jnp.asarray(x))
    np.testing.assert_allclose(got, _image_features(tm, x), atol=1e-5, rtol=0)


def test_preprocess_equals_clip_image_processor():
    proc = getattr(T, "CLIPImageProcessorPil", None) or T.CLIPImageProcessor
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 40, 3), dtype=np.uint8)
    want = proc(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})(
        images=list(images), return_tensors="np"
    )["pixel_values"]
    np.testing.assert_allclose(clip_preprocess(images, 24), want, atol=1e-6)


def test_compare_layers_names_the_broken_layer(vision_dir):
    path, tm = vision_dir
    x = _pixels(n=2, seed=5)
    good = load_pretrained(path)
    report = compare_layers(
        tm, good, [x], rules=rules(), print_table=False,
        torch_loss=lambda o: (o.image_embeds**2).sum(), nnx_loss=lambda o: (o**2).sum(),
    )  # fmt: skip
    assert report.first_bad is None and report.first_bad_param is None
    # 8 outside the blocks + 11 per block (2 norms, q/k/v/out, attn, fc1/fc2, mlp, the block)
    assert len(report.rows) == 8 + 2 * 11 and len(report.grad_rows) == len(tower_params(good))

    transposed = load_pretrained(path)
    q = transposed.encoder.layers[1].self_attn.q_proj.kernel
    q[...] = q[...].T  # the classic port bug: a square weight not transposed
    report = compare_layers(tm, transposed, [x], rules=rules(), print_table=False)
    assert report.first_bad == "vision_model.encoder.layers.1.self_attn.q_proj"
    assert "first layer past tolerance: vision_model.encoder.layers.1.self_attn.q_proj" in (
        report.table
    )

    swapped = load_pretrained(path)
    v = swapped.encoder.layers[0].self_attn.v_proj.kernel  # heads 0 and 1 swapped (8 wide)
    v[...] = jnp.concatenate([v[:, 8:16], v[:, :8], v[:, 16:]], axis=1)
    report = compare_layers(tm, swapped, [x], rules=rules(), print_table=False)
    assert report.first_bad == "vision_model.encoder.layers.0.self_attn.v_proj"


# ---- bad input: each refused with the path and the key/field named


def test_folder_without_config_or_weights_is_refused(vision_dir, tmp_path):
    src, _ = vision_dir
    with pytest.raises(FileNotFoundError, match=r"config.json: not found"):
        load_pretrained(tmp_path)
    shutil.copy(src / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match=r"model.safetensors: not found"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_pretrained(tmp_path / "nope")


def test_other_model_type_and_text_only_checkpoints_are_refused(clip_dir, tmp_path):
    src, _ = clip_dir
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    shutil.copy(src / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"config.json: model_type is 'bert'"):
        load_pretrained(tmp_path)

    torch.manual_seed(0)
    text_dir = tmp_path / "text"
    T.CLIPTextModelWithProjection(T.CLIPTextConfig(**TEXT)).save_pretrained(text_dir)
    with pytest.raises(ValueError, match=r"model_type is 'clip_text_model'"):
        load_pretrained(text_dir)

    # a CLIPModel config whose weights hold only the text tower
    only_text = tmp_path / "only_text"
    only_text.mkdir()
    shutil.copy(src / "config.json", only_text / "config.json")
    sd = safetensors_numpy.load_file(str(src / "model.safetensors"))
    keep = {k: v for k, v in sd.items() if k.startswith(("text_", "logit"))}
    safetensors_numpy.save_file(keep, str(only_text / "model.safetensors"))
    with pytest.raises(PortError, match=r"model.safetensors: no 'vision_model.\*' keys"):
        load_pretrained(only_text)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_missing_extra_and_misshaped_keys_are_named(vision_dir, tmp_path, damage):
    src, _ = vision_dir
    shutil.copy(src / "config.json", tmp_path / "config.json")
    sd = safetensors_numpy.load_file(str(src / "model.safetensors"))
    key = "vision_model.encoder.layers.1.mlp.fc1.weight"
    if damage == "missing":
        del sd[key]
        match = r"unfilled params \(1\): encoder.layers.1.mlp.fc1.kernel"
    elif damage == "extra":
        sd["vision_model.encoder.layers.1.mlp.fc3.weight"] = sd[key]
        match = r"unmapped keys \(1\): vision_model.encoder.layers.1.mlp.fc3.weight"
    else:
        sd[key] = sd[key][:30]
        match = rf"shape mismatches \(1\): {key} \(30, 32\) -> encoder.layers.1.mlp.fc1.kernel"
    safetensors_numpy.save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(PortError, match=match) as e:
        load_pretrained(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(e.value)
