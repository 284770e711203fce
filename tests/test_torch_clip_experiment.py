"""Seed 000 as its users run it: ``experiments.clip_contrastive --image-encoder clip`` on a
random-initialised transformers CLIPModel saved with ``save_pretrained`` (no weights are
downloadable here; a real checkpoint folder has the same files).

- frozen tower (``--freeze-image``, the seed's ``.detach()``): features computed once and cached,
  a second run reads the cache, the text encoder learns, the tower never enters the step;
- other weights never read a stale cache;
- fine-tune: both towers move, each with its own learning rate (the seed's ``param_groups``),
  shown per group in the printed report;
- an image folder (the CIFAR JPEG layout) works the same way.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

pytest.importorskip(
    "transformers", reason="transformers is not installed: pip install -e '.[torch]'"
)

from experiments import clip_contrastive as exp  # noqa: E402
from jaxgrad.models.clip import IMAGE_TOWER, TEXT_TOWER  # noqa: E402
from jaxgrad.port.hf_random import save_random_clip  # noqa: E402
from jaxgrad.training.step import init_train_state, make_train_step  # noqa: E402

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats; NNX biases broadcast"
ROOT = Path(__file__).resolve().parents[1]
FAST = ["--n-images", "96", "--n-val", "32", "--batch-size", "16", "--eval-every", "30"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_clip(tmp_path_factory.mktemp("clip_ckpt"))


def _run(*args: str) -> dict:
    """``python -m experiments.clip_contrastive --tiny ...`` as a user runs it -> final.json."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "experiments.clip_contrastive", "--tiny", *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = Path(args[args.index("--out-dir") + 1])
    return {**json.loads((out / "final.json").read_text()), "stdout": p.stdout}


def test_frozen_tower_caches_features_and_second_run_reads_them(weights, tmp_path):
    common = ["--image-encoder", "clip", "--image-weights", str(weights), "--freeze-image",
              "--feature-cache", str(tmp_path / "cache"), "--steps", "60", *FAST]  # fmt: skip
    first = _run(*common, "--out-dir", str(tmp_path / "a"))
    second = _run(*common, "--out-dir", str(tmp_path / "b"))
    assert {p: c["hit"] for p, c in first["feature_cache"].items()} == {
        "train": False,
        "val": False,
    }
    assert {p: c["hit"] for p, c in second["feature_cache"].items()} == {"train": True, "val": True}
    assert "feature cache (train): hit, read" in second["stdout"]
    # the text encoder learns from the cache; no gradient reaches the (absent) image tower
    assert first["last_train"]["loss"] < first["first_loss"] - 0.1
    assert first["last_train"]["grad_norm_text"] > 0 and first["last_train"]["grad_norm_image"] == 0
    img = next(g for g in first["param_groups"] if g["module"] == IMAGE_TOWER)
    assert img["cached"] and img["state_floats"] == 0 and img["params"] > 0
    assert "FROZEN: features cached, tower not run" in first["stdout"]
    # the same weights and data give the same training, cache or not
    assert second["last_train"]["loss"] == first["last_train"]["loss"]


def _frozen_cfg(weights, tmp_path, **kw):
    return dataclasses.replace(
        exp.Config.tiny(), image_encoder="clip", image_weights=str(weights), freeze_image=True,
        feature_cache=str(tmp_path / "cache"), n_images=64, n_val=16, batch_size=16, **kw,
    )  # fmt: skip


def test_other_weights_never_read_a_stale_cache(tmp_path):
    ckpt = save_random_clip(tmp_path / "ckpt", seed=0)
    cfg = _frozen_cfg(ckpt, tmp_path)
    train, val = exp.load_data(cfg)
    old = exp.setup(cfg, train, val).inputs
    save_random_clip(ckpt, seed=1)  # other weights, same folder
    new = exp.setup(cfg, train, val).inputs
    assert not new.cache["train"].hit and new.cache["train"].path != old.cache["train"].path
    assert not np.allclose(new.train, old.train)
    again = exp.setup(cfg, train, val).inputs
    assert again.cache["train"].hit and np.array_equal(again.train, new.train)
    # a cache file under the expected name but written for other weights is refused, named
    new.cache["train"].path.write_bytes(old.cache["train"].path.read_bytes())
    with pytest.raises(ValueError, match="feature cache was written for other"):
        exp.setup(cfg, train, val)


def test_fine_tune_moves_both_towers_each_at_its_own_lr(weights, tmp_path, capsys):
    cfg = dataclasses.replace(
        exp.Config.tiny(), image_encoder="clip", image_weights=str(weights), image_lr=1e-4,
        lr=3e-3, warmup_steps=0, clip_norm=None, n_images=64, n_val=16, batch_size=16,
    )  # fmt: skip
    train, val = exp.load_data(cfg)
    s = exp.setup(cfg, train, val)
    assert s.inputs.kind == "pixels" and s.inputs.train.shape == (len(train), 3, 32, 32)
    step = jax.jit(make_train_step(s.loss_fn, s.optimizer))
    state = init_train_state(s.params, s.optimizer)
    batch = {"images": s.inputs.train[:16], "labels": train.labels[:16]}
    new, _ = step(state, batch, s.keys["step"])
    # Adam's first update is lr * g / (|g| + 1e-8) = ±lr wherever |g| >> 1e-8, on 1-D leaves
    # (no weight decay there); some are ~0 by symmetry (k_proj's bias), so: the max per tower
    for tower, lr in ((IMAGE_TOWER, 1e-4), (TEXT_TOWER, 3e-3)):
        deltas = {
            jax.tree_util.keystr(path): np.abs(np.asarray(b) - np.asarray(a))
            for (path, a), b in zip(
                jax.tree_util.tree_leaves_with_path(state.params[tower]),
                jax.tree_util.tree_leaves(new.params[tower]),
            )
        }
        assert [p for p, d in deltas.items() if d.max() == 0] == [], f"{tower}: did not move"
        top = max(d.max() for d in deltas.values() if d.ndim == 1)
        np.testing.assert_allclose(top, lr, rtol=1e-2, err_msg=tower)  # f32 rounding of p + Δ
    exp.report_groups(cfg, s)
    report = capsys.readouterr().out
    assert "peak lr" in report and "0.0001" in report and "0.003" in report


def test_image_folder_of_cifar_layout_with_frozen_tower(weights, tmp_path):
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        d = tmp_path / "images" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(20):
            img = np.clip(np.array(colour) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(d / f"{i:04d}.jpg")
    final = _run(
        "--data", "folder", "--data-dir", str(tmp_path / "images"), "--n-images", "0",
        "--n-val", "12", "--batch-size", "16", "--steps", "30", "--eval-every", "30",
        "--image-encoder", "clip", "--image-weights", str(weights), "--freeze-image",
        "--feature-cache", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert "folder" in final["source"] or "images" in final["source"]
    assert final["feature_cache"]["train"]["hit"] is False
    assert final["chance"] == pytest.approx(1 / 3)
    assert final["last_train"]["loss"] < final["first_loss"]
