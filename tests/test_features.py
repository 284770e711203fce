"""jaxgrad.tasks.features: frozen-tower features computed once, cached under weights + data + preprocessing,
never read back for other weights or other data; the tower and the preprocessing's shapes."""

import functools
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgrad.data.clip_preprocess import clip_preprocess
from jaxgrad.errors import CacheError
from jaxgrad.port.hf_clip import CLIPVisionConfig, CLIPVisionTower
from jaxgrad.tasks.features import cached_features, extract_features, model_fingerprint

CFG = CLIPVisionConfig.tiny()


@pytest.fixture(scope="module")
def tower():
    return CLIPVisionTower(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (7, 20, 24, 3), dtype=np.uint8)


PRE = functools.partial(clip_preprocess, size=32)


def test_extract_features_equals_one_call_per_image(tower, images):
    feats = extract_features(tower, images, batch_size=3, preprocess=PRE)  # 3 + 3 + 1 (padded)
    assert feats.shape == (7, CFG.projection_dim) and feats.dtype == np.float32
    one = np.stack([np.asarray(tower(jnp.asarray(PRE(images[i : i + 1]))))[0] for i in range(7)])
    np.testing.assert_allclose(feats, one, atol=1e-5)


def test_cache_hits_only_for_same_weights_data_and_preprocessing(tower, images, tmp_path):
    first = cached_features(tower, images, tmp_path, batch_size=4, preprocess=PRE,
                            preprocess_id="clip32")  # fmt: skip
    assert not first.hit and first.path.parent == tmp_path
    again = cached_features(tower, images, tmp_path, batch_size=4, preprocess=PRE,
                            preprocess_id="clip32")  # fmt: skip
    assert again.hit and again.path == first.path
    np.testing.assert_array_equal(again.features, first.features)

    other = CLIPVisionTower(CFG, rngs=nnx.Rngs(1))  # other weights
    changed = images.copy()
    changed[3, 0, 0, 0] ^= 1  # one bit of one image
    for kw in (
        dict(model=other, images=images, preprocess_id="clip32"),
        dict(model=tower, images=changed, preprocess_id="clip32"),
        dict(model=tower, images=images, preprocess_id="clip32-other"),
    ):
        res = cached_features(cache_dir=tmp_path, batch_size=4, preprocess=PRE, **kw)
        assert not res.hit and res.path != first.path
    assert len(list(tmp_path.glob("features-*.npz"))) == 4
    # the other weights' features really are other features (the cache did not hand back ours)
    res = cached_features(other, images, tmp_path, batch_size=4, preprocess=PRE,
                          preprocess_id="clip32")  # fmt: skip
    assert res.hit and not np.allclose(res.features, first.features)


def test_same_params_other_structure_is_another_fingerprint(tower):
    graphdef, state = nnx.split(tower)
    same = nnx.merge(graphdef, state)
    assert model_fingerprint(same) == model_fingerprint(tower)
    same.encoder.layers[0].mlp.act = "gelu"  # another activation, same params
    same.cfg = CLIPVisionConfig(**{**CFG.__dict__, "hidden_act": "gelu"})
    assert model_fingerprint(same) != model_fingerprint(tower)


def test_a_tampered_or_truncated_cache_is_refused_with_its_path(tower, images, tmp_path):
    res = cached_features(tower, images, tmp_path, batch_size=8, preprocess=PRE,
                          preprocess_id="clip32")  # fmt: skip
    with np.load(res.path) as z:
        meta, feats = json.loads(str(z["meta"])), z["features"]
    meta["data"] = "0" * 64  # written for other data
    np.savez(res.path, features=feats, meta=np.asarray(json.dumps(meta, sort_keys=True)))
    with pytest.raises(
        ValueError, match=rf"{res.path}: feature cache was written for other \['data'\]"
    ):
        cached_features(
            tower, images, tmp_path, batch_size=8, preprocess=PRE, preprocess_id="clip32"
        )

    res.path.write_bytes(res.path.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{res.path}: unreadable feature cache"):
        cached_features(
            tower, images, tmp_path, batch_size=8, preprocess=PRE, preprocess_id="clip32"
        )


@pytest.mark.parametrize("keep_hash", [True, False], ids=["meta-as-read", "meta-without-hash"])
def test_a_cache_rewritten_with_the_same_meta_and_zero_features_is_refused(
    tower, images, tmp_path, keep_hash
):
    """Issue 21: the key and the meta match, the contents do not (zeros): refused with the path,
    whether the rewrite kept the meta as read or the meta without its recorded hash."""
    res = cached_features(tower, images, tmp_path, batch_size=8, preprocess=PRE,
                          preprocess_id="clip32")  # fmt: skip
    with np.load(res.path) as z:
        meta, feats = json.loads(str(z["meta"])), z["features"]
    if not keep_hash:
        meta.pop("features_sha256")
    np.savez(res.path, features=np.zeros_like(feats), meta=np.asarray(json.dumps(meta)))
    with pytest.raises(CacheError, match=rf"{res.path}: feature cache contents do not match"):
        cached_features(
            tower, images, tmp_path, batch_size=8, preprocess=PRE, preprocess_id="clip32"
        )
    np.savez(res.path, features=feats, meta=np.asarray(json.dumps(meta)))  # as written: a hit
    if keep_hash:
        again = cached_features(tower, images, tmp_path, batch_size=8, preprocess=PRE,
                                preprocess_id="clip32")  # fmt: skip
        assert again.hit and np.array_equal(again.features, feats)


def test_bad_arguments_are_refused(tower, images, tmp_path):
    with pytest.raises(ValueError, match="preprocess_id"):
        cached_features(tower, images, tmp_path, preprocess=PRE)
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        cached_features(tower, images, tmp_path / "f", preprocess=PRE, preprocess_id="p")
    with pytest.raises(ValueError, match=r"pixel_values \[B, 3, 32, 32\]"):
        extract_features(tower, images)  # not preprocessed: NHWC uint8


def test_tower_shapes_and_pooled_class_token(tower):
    x = jnp.asarray(PRE(np.zeros((2, 32, 32, 3), np.uint8)))
    assert x.shape == (2, 3, 32, 32)
    pooled = tower.pooled(x)
    assert pooled.shape == (2, CFG.hidden_size)
    np.testing.assert_allclose(
        tower(x), pooled @ tower.visual_projection.kernel[...], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPVisionConfig(hidden_act="relu6")
    with pytest.raises(ValueError, match="image_size 30 must be divisible by patch_size 8"):
        CLIPVisionConfig(image_size=30, patch_size=8)
