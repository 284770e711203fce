"""Issue 21, item 4: data and weights nobody here wrote tests for, each a clear refusal or a
documented conversion that is said on stderr (jaxgrad.data.imagefolder's module docstring)."""

import os

import numpy as np
import pytest
from PIL import Image

from jaxgrad.data.imagefolder import load_image_folder
from jaxgrad.data.sources import load_classification_data
from jaxgrad.errors import DataError, WeightsError


def png(path, px, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px, mode=mode).save(path)


def rgb(v):
    return np.full((4, 4, 3), v, np.uint8)


def test_grayscale_and_rgba_are_converted_to_rgb_and_said(tmp_path, capsys):
    png(tmp_path / "d" / "a" / "0.png", rgb(10))
    png(tmp_path / "d" / "a" / "1.png", np.full((4, 4), 77, np.uint8))  # L
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 0  # fully transparent: alpha is dropped, not blended
    png(tmp_path / "d" / "b" / "0.png", rgba)
    ds = load_image_folder(tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    assert ds.images.shape == (3, 4, 4, 3)
    np.testing.assert_array_equal(ds.images[1], rgb(77))  # grey repeated in R, G, B
    np.testing.assert_array_equal(ds.images[2], rgb(200))
    note = "converted to RGB: 1 L, 1 RGBA image(s) (alpha dropped)"
    assert note in capsys.readouterr().err
    load_image_folder(tmp_path / "d", cache_dir=tmp_path / "c", progress=False)  # cached
    assert note in capsys.readouterr().err  # said again when read from the cache


def test_mixed_sizes_are_refused_naming_a_file_of_each(tmp_path):
    for i in range(3):
        png(tmp_path / "d" / "a" / f"{i}.png", rgb(1))
    png(tmp_path / "d" / "b" / "big.png", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(
        DataError, match=r"3 of 4x4 \(e.g. a/0.png\); 1 of 64x64 \(e.g. b/big.png\)"
    ):
        load_image_folder(tmp_path / "d", cache_dir=tmp_path / "c", progress=False)


def test_non_image_files_are_left_out_and_said_symlinks_followed(tmp_path, capsys):
    png(tmp_path / "src" / "x.png", rgb(9))
    png(tmp_path / "d" / "a" / "0.png", rgb(1))
    (tmp_path / "d" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "d" / "a" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "d" / "b").mkdir()
    os.symlink(tmp_path / "src" / "x.png", tmp_path / "d" / "b" / "link.png")
    os.symlink(tmp_path / "src", tmp_path / "d" / "c")  # a symlinked class folder
    ds = load_image_folder(tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    assert ds.class_names == ("a", "b", "c") and ds.labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(ds.images[1], rgb(9))
    assert "left out 1 file(s) that are not .jpg/.jpeg/.png images (a/notes.txt)" in (
        capsys.readouterr().err
    )
    os.symlink(tmp_path / "gone.png", tmp_path / "d" / "b" / "broken.png")
    with pytest.raises(DataError, match=r"cannot decode image .*broken.png"):
        load_image_folder(tmp_path / "d", cache_dir=tmp_path / "c", progress=False)


def test_empty_class_folder_and_data_dir_that_is_a_file_are_refused(tmp_path):
    png(tmp_path / "d" / "a" / "0.png", rgb(1))
    (tmp_path / "d" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty holds no .jpg/.jpeg/.png images"):
        load_image_folder(tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    (tmp_path / "f.tar").write_text("x")
    with pytest.raises(DataError, match=r"--data-dir .*f.tar is a file, not a folder"):
        load_image_folder(tmp_path / "f.tar", cache_dir=tmp_path / "c")
    for data in ("folder", "cifar10"):
        with pytest.raises(DataError, match="is a file, not a folder"):
            load_classification_data(data, data_dir=str(tmp_path / "f.tar"), n_val=1, seed=0)


def test_train_limit_beyond_the_data_trains_on_all_and_says_so(capsys):
    train, _, _ = load_classification_data(
        "synthetic", data_dir=None, n_val=20, seed=0, synthetic_size=120, train_limit=10**6
    )
    assert len(train) == 100
    assert "--train-limit 1000000 is not below the 100 training images" in capsys.readouterr().err
    train, _, _ = load_classification_data(
        "synthetic", data_dir=None, n_val=20, seed=0, synthetic_size=120, train_limit=30
    )
    assert len(train) == 30 and capsys.readouterr().err == ""


def test_a_transposed_tensor_in_a_state_dict_is_refused_naming_its_key():
    from flax import nnx

    from jaxgrad.models.vit import ViT, ViTConfig
    from jaxgrad.port.vit_convert import from_torch_state_dict, to_torch_state_dict

    cfg = ViTConfig.tiny()
    params = nnx.state(ViT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    sd = to_torch_state_dict(params, cfg)
    from_torch_state_dict(sd, cfg)  # the untouched one converts
    key = "transformer.layers.0.0.to_qkv.weight"  # [3 * inner, dim] = [96, 32]
    sd[key] = sd[key].T
    with pytest.raises(WeightsError, match=rf"{key} \(32, 96\) -> .*expects \(32, 96\)"):
        from_torch_state_dict(sd, cfg)
    # a square tensor transposed ([32, 32] to_out) has the same shape: no shape check can see
    # it; compare_layers (jaxgrad.port) against the torch model is the check for that case
