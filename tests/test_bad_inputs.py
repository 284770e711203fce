"""Bad input gets an error that names the problem and the fix, and leaves no partial files.

One test per case. Each error message is matched on both halves: what is wrong (with the
offending value) and what to do about it. Where files are involved, the folder is listed
afterwards: nothing half-written (``*.part``, ``*.tmp``, hidden temp folders) may remain.
"""

import dataclasses
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxgrad
from jaxgrad.data import cifar10
from jaxgrad.data.dataset import ImageDataset
from jaxgrad.data.imagefolder import load_image_folder
from jaxgrad.models.vit import ViT, ViTConfig
from jaxgrad.report.cli import parse
from jaxgrad.training.checkpoint import Checkpointer


def listing(path):
    """Every path under ``path`` (hidden ones included), relative, sorted."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- gradient helpers --------------------------------------------------------------------


def test_non_scalar_loss_to_grad_names_shape_and_fix():
    with pytest.raises(ValueError, match=r"only for scalar outputs.*\[\(3,\)\].*\.sum\(\)"):
        jaxgrad.grad(lambda x: x * 2.0)(jnp.ones(3))


def test_shape_one_loss_is_not_a_scalar():
    with pytest.raises(ValueError, match=r"shape-\(1,\) result is not a scalar.*out\[0\]"):
        jaxgrad.backward(lambda x: jnp.sum(x**2, keepdims=True), jnp.ones(3))


def test_cotangent_with_wrong_shape_names_both_shapes():
    with pytest.raises(
        ValueError, match=r"shape \(4,\) but the output has shape \(3,\).*ones_like"
    ):
        jaxgrad.backward(lambda x: x**2, jnp.ones(3), cotangent=jnp.ones(4))


def test_cotangent_with_wrong_dtype_says_how_to_cast():
    with pytest.raises(TypeError, match=r"dtype bfloat16 but the output has dtype float32.*astype"):
        jaxgrad.backward(lambda x: x**2, jnp.ones(3), cotangent=jnp.ones(3, jnp.bfloat16))


def test_integer_input_to_differentiation_says_cast():
    with pytest.raises(TypeError, match=r"argument 0 of dtype int32.*astype\(jnp.float32\)"):
        jaxgrad.grad(lambda x: jnp.sum(x * x))(jnp.arange(3, dtype=jnp.int32))


# --- model inputs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vit():
    """An abstract ViT (shapes only): the input checks run before any parameter is touched,
    and building real parameters op by op costs seconds on a busy CPU."""
    return nnx.eval_shape(lambda: ViT(ViTConfig.tiny(), rngs=nnx.Rngs(0)))


def test_vit_rejects_torch_layout_images_with_the_transpose(tiny_vit):
    with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\].*got \(2, 3, 32, 32\).*transpose"):
        tiny_vit(jnp.zeros((2, 3, 32, 32), jnp.float32))


def test_vit_rejects_uint8_images_with_normalize(tiny_vit):
    with pytest.raises(ValueError, match=r"dtype uint8.*jaxgrad.data.normalize"):
        tiny_vit(jnp.zeros((2, 32, 32, 3), jnp.uint8))


def test_labels_out_of_range_are_rejected_with_the_range():
    images = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\[0, 10\).*got range \[0, 10\]"):
        ImageDataset(images, np.array([0, 3, 10], np.int32), tuple("abcdefghij"), "test")


# --- datasets ------------------------------------------------------------------------------


def test_empty_cifar_dir_says_download_or_point_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no CIFAR-10 in .*--download.*--data-dir"):
        cifar10.load_cifar10(tmp_path)
    assert listing(tmp_path) == []


def test_empty_image_folder_says_expected_layout(tmp_path):
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    root.mkdir()
    with pytest.raises(ValueError, match=r"no class sub-folders: expected root/<class>/<image>"):
        load_image_folder(root, cache_dir=cache)
    assert listing(tmp_path) == ["imgs"]


def test_corrupt_image_names_the_file_and_writes_no_cache(tmp_path):
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode image .*broken.jpg.*remove or replace"):
        load_image_folder(root, cache_dir=cache)
    assert not cache.exists() or listing(cache) == []


def test_corrupt_cifar_batch_names_the_file(tmp_path):
    folder = tmp_path / cifar10.FOLDER
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10}))
    (folder / "data_batch_1").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ValueError, match=r"data_batch_1 is corrupt.*delete the folder"):
        cifar10.load_cifar10(tmp_path, batch_md5=None)  # a re-pickled copy


def test_archive_md5_mismatch_says_delete_and_download_and_extracts_nothing(tmp_path):
    (tmp_path / cifar10.ARCHIVE).write_bytes(b"not the real archive")
    with pytest.raises(ValueError, match=rf"md5 \w+, expected {cifar10.CIFAR10_MD5}.*Delete it"):
        cifar10.load_cifar10(tmp_path)
    assert listing(tmp_path) == [cifar10.ARCHIVE]  # no folder, no temp extraction left


def test_download_md5_mismatch_keeps_nothing(tmp_path, monkeypatch):
    source = tmp_path / "server" / "cifar.tar.gz"
    source.parent.mkdir()
    source.write_bytes(b"truncated download")
    monkeypatch.setattr(cifar10, "CIFAR10_URL", source.as_uri())  # no network in tests
    data_dir = tmp_path / "data"
    with pytest.raises(ValueError, match=r"has md5 \w+, expected .*nothing was kept, run again"):
        cifar10.load_cifar10(data_dir, download=True)
    assert listing(data_dir) == []  # no .part file, no archive


# --- checkpoints ---------------------------------------------------------------------------


def test_resume_without_checkpoint_says_train_first(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint .*train first or drop --resume"):
        Checkpointer(tmp_path / "ckpt").restore({"w": jnp.zeros(2)})


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, {"w": jnp.zeros((2,), jnp.float32)})
    with pytest.raises(ValueError, match=r"(?s)does not match the expected tree.*another model"):
        ckpt.restore({"w": jnp.zeros((3,), jnp.float32), "b": jnp.zeros(1)})
    assert ckpt.all_steps() == [1]
    ckpt.close()


def test_jax_key_is_not_a_float_input():
    """A PRNG key passed where a float is differentiated: same clear dtype error."""
    with pytest.raises(TypeError, match="cannot differentiate"):
        jaxgrad.grad(lambda k: jnp.sum(jax.random.normal(k, (2,))))(jax.random.key(0))


# --- command line (the ViT experiment) -----------------------------------------------------


def usage_error(capsys, argv) -> str:
    """Parse ``argv`` for the ViT experiment; return the usage error argparse prints (exit 2)."""
    from experiments.vit_cifar10 import Config

    with pytest.raises(SystemExit) as exc:
        parse(Config, argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_negative_batch_size_is_a_usage_error(capsys, tmp_path):
    err = usage_error(capsys, ["--batch-size", "-64", "--out-dir", str(tmp_path / "out")])
    assert "--batch-size must be > 0, got -64" in err
    assert listing(tmp_path) == []


def test_unknown_recipe_lists_the_choices(capsys):
    err = usage_error(capsys, ["--recipe", "fancy"])
    assert "invalid choice: 'fancy'" in err and "'seed'" in err and "'strong'" in err


def test_real_data_without_data_dir_says_which_flag(capsys):
    err = usage_error(capsys, ["--data", "cifar10"])
    assert "--data cifar10 needs --data-dir (add --download for cifar10)" in err


def test_empty_data_dir_fails_before_any_output_is_written(tmp_path):
    from experiments.vit_cifar10 import Config, main

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    cfg = dataclasses.replace(Config.tiny(), data="cifar10", data_dir=str(data), out_dir=str(out))
    with pytest.raises(FileNotFoundError, match=r"no CIFAR-10 in .*--download.*--data-dir"):
        main(cfg)
    assert listing(tmp_path) == ["data"]  # no out/ folder: no metrics, checkpoints, plots


def test_zero_devices_is_a_usage_error(capsys):
    assert "--devices must be > 0, got 0" in usage_error(capsys, ["--devices", "0"])


def test_more_devices_than_visible_fails_before_any_output(tmp_path):
    from experiments.vit_cifar10 import Config, main

    cfg = dataclasses.replace(Config.tiny(), devices=64, out_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"asked for 64 devices.*device_count=64"):
        main(cfg)
    assert listing(tmp_path) == []
