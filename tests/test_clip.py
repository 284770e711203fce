"""CLIP-style training: captions/tokenizer, the text encoder, both towers, freezing, clamp, clipping.

The seed's questions, each answered by a test here:
- does the gradient reach my encoder?  test_gradient_reaches_every_leaf_of_both_towers
- what does .detach() on image features do?  test_freeze_image_zero_grads_and_bit_identical_params
- are my encoder's params in the optimizer?  test_freeze_image_zero_grads_and_bit_identical_params
  (Adam state per module) and test_param_groups_report_state_per_module
- exploding gradients?  test_clip_norm_bounds_the_global_norm
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import clip_contrastive as exp
from experiments import tour
from experiments._support.common import Row
from jaxgrad.autodiff.deps import grad_dependence
from jaxgrad.autodiff.freeze import path_str
from jaxgrad.data.captions import PAD, TEMPLATES, UNK, Tokenizer, caption_table, words
from jaxgrad.errors import DataError
from jaxgrad.models.clip import (
    IMAGE_TOWER,
    MAX_LOGIT_SCALE,
    TEXT_TOWER,
    ClipConfig,
    clamp_logit_scale,
)
from jaxgrad.models.text import TextConfig, masked_mean
from jaxgrad.report.cli import parse
from jaxgrad.tasks.clip import CLIP_STEP, clip_optimizer, param_groups
from jaxgrad.tasks.clip_eval import make_evaluator
from jaxgrad.training.runs import RunDirError
from jaxgrad.training.step import init_train_state, make_train_step

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"

TINY = dataclasses.replace(exp.Config.tiny(), n_images=64, n_val=16, steps=3, augment=False)


# ----------------------------------------------------------------------------- captions


def test_tokenizer_pad_unk_truncation_and_mask():
    tok = Tokenizer.build(["a photo of a cat.", "a photo of a dog."])
    assert tok.vocab[:2] == (PAD, UNK) and tok.vocab[2] == "a"  # most frequent first
    ids, mask = tok.encode(["a photo of a zebra.", "cat"], max_len=4)
    assert ids.dtype == np.int32 and ids.shape == (2, 4)
    # "a photo of a zebra ." truncated to 4 tokens; "cat" padded with <pad> = 0
    assert tok.decode(ids[0]) == "a photo of a"
    assert list(ids[1]) == [tok.vocab.index("cat"), 0, 0, 0]
    assert mask.tolist() == [[True] * 4, [True, False, False, False]]
    ids, _ = tok.encode(["a zebra"], max_len=3)
    assert ids[0, 1] == tok.unk_id  # out-of-vocabulary word
    assert words("A close-up photo.") == ["a", "close", "-", "up", "photo", "."]


def test_tokenizer_rejects_bad_inputs():
    tok = Tokenizer.build(["a cat"])
    with pytest.raises(TypeError, match="wrap a single one"):
        tok.encode("a cat", max_len=4)
    with pytest.raises(ValueError, match="no tokens"):
        tok.encode(["   "], max_len=4)
    with pytest.raises(ValueError, match="must start with"):
        Tokenizer(("cat", "dog"))


def test_caption_table_covers_every_template_and_class():
    tok, ids, mask = caption_table(["cat", "maple_tree"], max_len=16)
    assert ids.shape == mask.shape == (len(TEMPLATES), 2, 16)
    assert tok.decode(ids[0, 1]) == "a photo of a maple tree ."
    assert tok.unk_id not in ids  # the vocabulary was built from these very captions
    with pytest.raises(ValueError, match="raise max_len"):
        caption_table(["cat"], max_len=4)


# ----------------------------------------------------------------------------- text tower


def test_masked_mean_matches_hand_form():
    x = jnp.arange(12.0).reshape(2, 3, 2)
    mask = jnp.array([[True, True, False], [False, False, False]])
    out = masked_mean(x, mask)
    np.testing.assert_allclose(out[0], (x[0, 0] + x[0, 1]) / 2)
    np.testing.assert_array_equal(out[1], 0.0)  # nothing to pool: zeros, not NaN


@pytest.fixture(scope="module")
def data():
    train, _ = exp.load_data(TINY)
    batch = {"images": jnp.asarray(train.images[:16]), "labels": jnp.asarray(train.labels[:16])}
    return train, batch


@pytest.fixture(scope="module")
def plain(data):
    """The experiment's tiny setup (both towers trainable); its params are never donated."""
    return exp.setup(TINY, data[0])


def _connected(s, batch, key):
    """Which params leaves the loss's gradient depends on: read off the traced backward pass.

    Only traced (``make_jaxpr``), never compiled or run: a leaf that is not connected gets a
    structural zero, PyTorch's ``.grad is None``.
    """
    f = lambda p: s.loss_fn(p, batch, key)[0]
    (connected,) = grad_dependence(lambda ct: jax.vjp(f, s.params)[1](ct), jnp.float32(1))
    return connected


def test_text_encoder_ignores_padding(plain):
    g, p, r = plain.graphdef, plain.params, plain.rest
    encode = jax.jit(lambda p, ids, m: nnx.merge(g, p, r).text_encoder(ids, m))
    ids = jnp.array([[3, 4, 5, 0, 0], [6, 7, 0, 0, 0]], jnp.int32)
    mask = ids != 0
    # longer padding, and garbage ids where the mask is False: the output must not change
    ids_long = jnp.concatenate([ids.at[:, 3:].set(9), jnp.full((2, 3), 11, jnp.int32)], axis=1)
    mask_long = jnp.concatenate([mask, jnp.zeros((2, 3), bool)], axis=1)
    out = encode(p, ids, mask)
    np.testing.assert_allclose(out, encode(p, ids_long, mask_long), atol=1e-5)
    assert out.shape == (2, TINY.embed_dim)


def test_text_encoder_rejects_bad_inputs(plain):
    enc = nnx.merge(plain.graphdef, plain.params, plain.rest).text_encoder
    ids = jnp.ones((2, TINY.max_len + 1), jnp.int32)
    with pytest.raises(ValueError, match=f"tokenize with max_len={TINY.max_len}"):
        enc(ids, ids != 0)
    with pytest.raises(TypeError, match="integer ids"):
        enc(jnp.ones((2, 3)), jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match="must be divisible"):
        TextConfig(dim=30, heads=4)


# ----------------------------------------------------------------------------- both towers


def test_model_features_are_unit_norm_and_scale_initialised(plain, data):
    g, p, r = plain.graphdef, plain.params, plain.rest
    assert math.isclose(float(p["logit_scale"][...]), math.log(1 / 0.07), rel_tol=1e-6)
    ids = jnp.array([[2, 3, 0], [4, 0, 0], [5, 6, 7]], jnp.int32)
    images = data[1]["images"][:3].astype(jnp.float32) / 255.0
    img, txt = jax.jit(lambda p: nnx.merge(g, p, r)(images, ids, ids != 0))(p)
    assert img.shape == txt.shape == (3, TINY.embed_dim)
    np.testing.assert_allclose(jnp.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)


def test_gradient_reaches_every_leaf_of_both_towers(plain, data, key):
    connected = _connected(plain, data[1], key)
    grads = jax.jit(jax.grad(lambda p: plain.loss_fn(p, data[1], key)[0]))(plain.params)
    tops = set()
    for (path, linked), g in zip(
        jax.tree_util.tree_leaves_with_path(connected), jax.tree_util.tree_leaves(grads)
    ):
        name = path_str(path)
        tops.add(name.split("/")[0])
        assert linked, f"{name}: no gradient path from the loss"
        # attention key biases add the same q·b_k to every logit of a row: softmax cancels it,
        # so their gradient is zero in exact arithmetic (rounding noise only) — by design.
        if not name.endswith("attn/key/bias"):
            assert jnp.any(g != 0), f"{name}: gradient is numerically zero"
    assert tops == {IMAGE_TOWER, TEXT_TOWER, "logit_scale"}


def test_freeze_image_zero_grads_and_bit_identical_params(data, key):
    cfg = dataclasses.replace(TINY, freeze_image=True)
    s = exp.setup(cfg, data[0])
    connected = _connected(s, data[1], key)
    # .detach() == stop_gradient: a structural zero (PyTorch's None) for every image leaf
    assert not any(jax.tree.leaves(connected[IMAGE_TOWER]))
    assert all(jax.tree.leaves(connected[TEXT_TOWER]))

    before = jax.tree.map(np.array, s.params)
    # the image tower carries no optimizer state: Adam moments exist for the text tower only
    groups = {g["module"]: g for g in param_groups(s.optimizer, s.params, s.frozen)}
    assert groups[IMAGE_TOWER]["state_floats"] == 0
    assert groups[IMAGE_TOWER]["frozen"] == groups[IMAGE_TOWER]["params"]
    assert groups[TEXT_TOWER]["state_floats"] == 2 * groups[TEXT_TOWER]["params"]
    state = init_train_state(s.params, s.optimizer)
    step = make_train_step(s.loss_fn, s.optimizer, **CLIP_STEP)
    for _ in range(3):
        state, m = step(state, data[1], key)
        # the image gradient's global norm is exactly 0.0: every entry of every leaf is 0
        assert float(m["grad_norm_image"]) == 0.0 and float(m["grad_norm_text"]) > 0
        assert 0.0 <= float(m["logit_scale"]) <= MAX_LOGIT_SCALE
    after = jax.tree.map(np.asarray, state.params)
    same = jax.tree.map(np.array_equal, before[IMAGE_TOWER], after[IMAGE_TOWER])
    assert all(jax.tree.leaves(same)), "a frozen image leaf moved"
    moved = jax.tree.map(
        lambda a, b: not np.array_equal(a, b), before[TEXT_TOWER], after[TEXT_TOWER]
    )
    assert all(jax.tree.leaves(moved)), "a text leaf did not move"


def test_param_groups_report_state_per_module(plain):
    params = plain.params
    groups = param_groups(plain.optimizer, params, plain.frozen)
    assert [g["module"] for g in groups] == [IMAGE_TOWER, "logit_scale", TEXT_TOWER]
    for g in groups:  # every module trainable: Adam's mu and nu for each scalar
        assert g["frozen"] == 0 and g["state_floats"] == 2 * g["params"]
    total = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    assert sum(g["params"] for g in groups) == total


def test_logit_scale_clamp_holds_after_a_step_past_ln_100(plain, key):
    params = plain.params
    # loss = sign · logit_scale with lr 10: one SGD step moves logit_scale by ∓10, out of range
    loss_fn = lambda p, sign, k: (sign * p["logit_scale"][...], {})
    free = make_train_step(loss_fn, optax.sgd(10.0), donate=False)
    clamped = make_train_step(loss_fn, optax.sgd(10.0), post_update=clamp_logit_scale, donate=False)
    state = init_train_state(params, optax.sgd(10.0))
    for sign, bound in ((-1.0, math.log(100.0)), (1.0, 0.0)):  # CLIP: multiplier in [1, 100]
        unclamped = float(free(state, jnp.float32(sign), key)[0].params["logit_scale"][...])
        assert unclamped == pytest.approx(math.log(1 / 0.07) - 10.0 * sign, rel=1e-6)
        new = clamped(state, jnp.float32(sign), key)[0].params
        assert float(new["logit_scale"][...]) == pytest.approx(bound)
        # the projection touches logit_scale only
        same = jax.tree.map(np.array_equal, new[TEXT_TOWER], params[TEXT_TOWER])
        assert all(jax.tree.leaves(same))


def test_clip_norm_bounds_the_global_norm(key):
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    loss_fn = lambda p, batch, k: (1e4 * (jnp.sum(p["w"] ** 2) + jnp.sum(p["b"])), {})
    opt = optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(1.0))
    step = make_train_step(loss_fn, opt, donate=False)
    _, m = step(init_train_state(params, opt), None, key)
    assert float(m["grad_norm"]) > 1e4  # the raw gradient explodes...
    assert float(m["update_norm"]) == pytest.approx(0.5, rel=1e-6)  # ...the step does not
    # the experiment's optimizer clips before AdamW: first moment = (1 − β1) · clipped grad
    names = ("steps", "lr", "warmup_steps", "weight_decay", "freeze_image")
    adam, _ = clip_optimizer(params, clip_norm=0.5, **{n: getattr(TINY, n) for n in names})
    grads = {"w": jnp.full(3, 1e4), "b": jnp.full(2, -1e4)}
    _, st = adam.update(grads, adam.init(params), params)
    mu = [x for p, x in jax.tree_util.tree_leaves_with_path(st) if ".mu" in jax.tree_util.keystr(p)]
    assert float(optax.tree.norm(mu)) == pytest.approx(0.1 * 0.5, rel=1e-5)


def test_experiment_runs_and_writes_outputs(tmp_path):
    cfg = dataclasses.replace(
        TINY, loss="siglip", freeze_image=True, steps=2, eval_every=2, log_every=1,
        out_dir=str(tmp_path),
    )  # fmt: skip
    final = exp.main(cfg)
    assert set(final["val"]) >= {"zeroshot_acc", "zeroshot_ens_acc", "i2t_r@1", "t2i_r@5"}
    assert all(0.0 <= v <= 1.0 for v in final["val"].values())
    assert final["last_train"]["grad_norm_image"] == 0.0
    assert final["last_train"]["bias"] == pytest.approx(-10.0, abs=0.1)  # SigLIP's init
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1, 2, 2]  # eval at 0, train, eval
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert final["classes"] == list(exp.load_data(cfg)[0].class_names)  # the prompts' names


def test_zero_shot_labels_are_matched_to_the_prompts_by_name(plain, data):
    """An evaluation set naming the same classes in another order (its labels renumbered to
    match) scores exactly the same; a name the prompts do not know is refused."""
    train = data[0]
    val = train.subset(np.arange(48))
    names = train.class_names[::-1]  # reversed naming: label l is now class C-1-l
    renamed = dataclasses.replace(val, labels=(len(names) - 1 - val.labels).astype(np.int32),
                                  class_names=names)  # fmt: skip
    ev = lambda v: make_evaluator(plain.graphdef, plain.rest, v, plain.captions, seed=0,
                                  fast=True, class_names=train.class_names)(plain.params)  # fmt: skip
    assert ev(renamed) == ev(val)
    unknown = dataclasses.replace(val, class_names=(*train.class_names[:-1], "zebra"))
    with pytest.raises(DataError, match="zebra are not classes of the CLIP run's training set"):
        ev(unknown)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="--batch-size must be >= 2"):
        dataclasses.replace(TINY, batch_size=1)
    with pytest.raises(ValueError, match="--clip-norm must be > 0"):
        dataclasses.replace(TINY, clip_norm=0.0)
    with pytest.raises(ValueError, match="divisible by --heads=3"):
        dataclasses.replace(TINY, heads=3)
    with pytest.raises(ValueError, match="clamp range"):
        ClipConfig(logit_scale_init=5.0)  # above ln 100: the first clamp would silently move it
    with pytest.raises(FileNotFoundError, match="extract the images"):
        exp.load_data(dataclasses.replace(TINY, data="folder", data_dir="/nonexistent"))


# ----------------------------------------------------------------------------- hostile inputs


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "1000"], "--batch-size 1000 is larger than the training set"),
        (["--lr", "nan"], "--lr"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
        (["--image-lr", "0"], "--image-lr must be > 0"),
        (["--clip-norm", "inf"], "--clip-norm"),
        (["--image-encoder", "clip"], "--image-encoder clip needs --image-weights"),
    ],
)
def test_bad_flags_name_the_flag_and_write_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        parse(exp.Config, ["--tiny", "--out-dir", str(out), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_out_of_range_labels_are_refused_by_the_loss(plain, data, key):
    bad = {**data[1], "labels": data[1]["labels"].at[0].set(10)}  # 10 classes: 0..9
    with pytest.raises(ValueError, match="class_labels"):
        plain.loss_fn(plain.params, bad, key)  # concrete labels: checked at once
    loss, _ = jax.jit(plain.loss_fn)(plain.params, bad, key)  # traced: NaN, the guard's cue
    assert np.isnan(float(loss))
    good, _ = jax.jit(plain.loss_fn)(plain.params, data[1], key)
    assert np.isfinite(float(good))


def test_second_run_on_an_out_dir_refused_unless_overwrite(tmp_path):
    cfg = dataclasses.replace(TINY, steps=2, eval_every=2, out_dir=str(tmp_path), overwrite=False)
    exp.main(cfg)
    with pytest.raises(RunDirError, match="--overwrite"):
        exp.main(cfg)
    # --tiny runs are throwaway: re-running replaces a previous tiny run (and nothing else)
    assert exp.Config.tiny().overwrite is None and exp.Config.tiny().tiny_run
    final = exp.main(dataclasses.replace(cfg, overwrite=True))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1, 2]  # one run, not two
    assert final["val"]


def test_tour_row_for_the_pretrained_tower_is_skipped_without_transformers(monkeypatch, capsys):
    monkeypatch.setattr(exp, "HAVE_TRANSFORMERS", False)
    row = exp._pretrained_row()
    assert row.skipped and row.jaxgrad == "skipped: transformers not installed"
    tour.print_table([row, Row("other", "x", "x", True)])
    assert "1/1 scenarios match the PyTorch seeds (1 skipped" in capsys.readouterr().out
