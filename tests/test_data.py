"""Datasets (synthetic, image folder, CIFAR-10 archive) and on-device batching."""

import hashlib
import io
import pickle
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxgrad.data.cifar10 as cifar
import jaxgrad.data.imagefolder as imagefolder
from jaxgrad.data import (
    ImageDataset,
    augment,
    epoch_indices,
    eval_indices,
    load_cifar10,
    load_image_folder,
    make_synthetic,
    normalize,
    take,
    train_val_split,
)

# ---------------------------------------------------------------- synthetic + split


def test_synthetic_is_labelled_deterministic_and_balanced():
    a, b, c = make_synthetic(60, seed=0), make_synthetic(60, seed=0), make_synthetic(60, seed=1)
    assert a.images.shape == (60, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.labels.dtype == np.int32 and np.bincount(a.labels).tolist() == [6] * 10
    assert "synthetic" in a.source and "NOT" in a.source
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_synthetic_classes_are_separable_by_nearest_class_mean():
    # learnable: a trivial classifier fit on one seed beats chance by far on another seed
    train, test = make_synthetic(500, seed=0), make_synthetic(200, seed=1)
    x = train.images.reshape(500, -1).astype(np.float64)
    means = np.stack([x[train.labels == k].mean(0) for k in range(10)])
    xt = test.images.reshape(200, -1).astype(np.float64)
    pred = np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == test.labels).mean() > 0.5


def test_train_val_split_is_a_disjoint_seeded_partition():
    ds = make_synthetic(50, seed=0)
    tr, va = train_val_split(ds, 10, seed=3)
    assert len(tr) == 40 and len(va) == 10
    rows = {r.tobytes() for r in np.concatenate([tr.images, va.images]).reshape(50, -1)}
    assert rows == {r.tobytes() for r in ds.images.reshape(50, -1)}
    tr2, _ = train_val_split(ds, 10, seed=3)
    np.testing.assert_array_equal(tr.labels, tr2.labels)
    with pytest.raises(ValueError, match="n_val"):
        train_val_split(ds, 50, seed=0)


def test_dataset_rejects_bad_arrays():
    im = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        ImageDataset(im, np.array([0, 2], np.int32), ("a", "b"), "t")
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(im.astype(np.float32), np.array([0, 1], np.int32), ("a", "b"), "t")


# ---------------------------------------------------------------- image folder


def _write_folder(root, rng):
    """3 classes created out of order; PNGs (lossless) and one JPEG."""
    pixels = {}
    for name in ("zebra", "apple", "mango"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
            pixels[(name, i)] = arr
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(root / "apple" / "2.jpg", quality=95)
    (root / "apple" / "notes.txt").write_text("not an image")
    return pixels


def test_image_folder_sorted_classes_pixels_and_cache(tmp_path, monkeypatch):
    pixels = _write_folder(tmp_path / "imgs", np.random.default_rng(0))
    cache = tmp_path / "cache"
    ds = load_image_folder(tmp_path / "imgs", cache_dir=cache)
    assert ds.class_names == ("apple", "mango", "zebra")  # sorted, like torchvision
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert ds.source == f"imagefolder:{tmp_path / 'imgs'}"
    np.testing.assert_array_equal(ds.images[5], pixels[("zebra", 0)])
    np.testing.assert_array_equal(ds.images[1], pixels[("apple", 1)])
    assert np.abs(ds.images[2].astype(int) - 200).max() <= 2  # the JPEG, lossy
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob(".*tmp"))

    # second load reads the cache: no decoding at all
    def no_decode(path):
        raise AssertionError(f"decoded {path} although the cache is valid")

    monkeypatch.setattr(imagefolder, "_decode", no_decode)
    again = load_image_folder(tmp_path / "imgs", cache_dir=cache)
    np.testing.assert_array_equal(again.images, ds.images)
    # a changed folder invalidates the cache
    Image.fromarray(pixels[("zebra", 0)]).save(tmp_path / "imgs" / "zebra" / "9.png")
    with pytest.raises(AssertionError, match="decoded"):
        load_image_folder(tmp_path / "imgs", cache_dir=cache)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing", cache_dir=tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path / "empty", cache_dir=tmp_path / "c")
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "cat" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode image .*x\.jpg"):
        load_image_folder(tmp_path / "bad", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


# ---------------------------------------------------------------- CIFAR-10 archive


def _fake_cifar_archive(path, rng, n=3):
    """A tiny archive in the official layout: pickled dicts, rows of 3072 bytes in CHW order."""
    buf = io.BytesIO()
    batches = {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:

        def add(name, obj):
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
        for name in (*cifar.TRAIN_BATCHES, *cifar.TEST_BATCHES):
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, n).tolist()
            batches[name] = (data, labels)
            add(name, {b"data": data, b"labels": labels})
    path.write_bytes(buf.getvalue())
    return batches


@pytest.fixture
def fake_url(tmp_path, monkeypatch):
    src = tmp_path / "server" / "cifar.tar.gz"
    src.parent.mkdir()
    batches = _fake_cifar_archive(src, np.random.default_rng(0))
    monkeypatch.setattr(cifar, "CIFAR10_URL", src.as_uri())
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(src.read_bytes()).hexdigest())
    monkeypatch.setattr(cifar, "CIFAR10_BATCH_MD5", _member_md5s(src))  # the fake set's own
    monkeypatch.setattr(cifar, "ROWS_PER_BATCH", 3)
    return src, batches


def _member_md5s(archive):
    with tarfile.open(archive) as tar:
        return {
            m.name.rsplit("/", 1)[-1]: hashlib.md5(tar.extractfile(m).read()).hexdigest()
            for m in tar.getmembers()
            if m.isfile()
        }


def test_cifar10_download_check_extract_load(tmp_path, fake_url):
    _, batches = fake_url
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_cifar10(tmp_path / "data")
    ds = load_cifar10(tmp_path / "data", download=True)
    assert ds.images.shape == (15, 32, 32, 3) and ds.source == "cifar10"
    data, labels = batches["data_batch_1"]
    np.testing.assert_array_equal(ds.images[0, :, :, 1], data[0, 1024:2048].reshape(32, 32))
    assert ds.labels[:3].tolist() == labels and ds.class_names[3] == "c3"
    test = load_cifar10(tmp_path / "data", train=False)  # reuses the extracted copy
    assert len(test) == 3
    # pointing straight at the extracted folder works too
    assert len(load_cifar10(tmp_path / "data" / "cifar-10-batches-py")) == 15


def test_cifar10_md5_mismatch_leaves_nothing(tmp_path, fake_url, monkeypatch):
    monkeypatch.setattr(cifar, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(ValueError, match="md5"):
        load_cifar10(tmp_path / "data", download=True)
    assert list((tmp_path / "data").iterdir()) == []


def test_cifar10_truncated_archive_leaves_nothing(tmp_path, fake_url, monkeypatch):
    src, _ = fake_url
    truncated = src.read_bytes()[: len(src.read_bytes()) // 2]
    src.write_bytes(truncated)
    with pytest.raises(ValueError, match="md5"):  # the official md5 catches it first
        load_cifar10(tmp_path / "a", download=True)
    assert list((tmp_path / "a").iterdir()) == []
    # even with a matching md5 (a user's own copy), extraction fails cleanly
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(truncated).hexdigest())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / cifar.ARCHIVE).write_bytes(truncated)
    with pytest.raises(ValueError, match="cannot extract"):
        load_cifar10(tmp_path / "b")
    assert [p.name for p in (tmp_path / "b").iterdir()] == [cifar.ARCHIVE]


# ---------------------------------------------------------------- on-device batching


def test_normalize_matches_to_tensor_then_normalize():
    x = jnp.asarray([[0, 255, 51]], jnp.uint8)
    np.testing.assert_allclose(normalize(x), [[-1.0, 1.0, 51 / 255 * 2 - 1]], rtol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        normalize(x.astype(jnp.float32))


def test_augment_keeps_shapes_labels_and_is_a_window_of_the_padded_image(key):
    ds = make_synthetic(32, seed=0)
    images, labels = jnp.asarray(ds.images), jnp.asarray(ds.labels)
    idx = epoch_indices(key, 32, 16)
    batch = take(images, labels, idx[0])
    aug = jax.jit(augment)
    out = aug(key, batch["images"])
    assert out.shape == (16, 32, 32, 3) and out.dtype == jnp.uint8
    np.testing.assert_array_equal(batch["labels"], ds.labels[np.asarray(idx[0])])
    np.testing.assert_array_equal(out, aug(key, batch["images"]))  # same key, same images
    # every output is a 32x32 window of the reflect-padded input, possibly mirrored
    padded = np.pad(np.asarray(batch["images"]), ((0, 0), (4, 4), (4, 4), (0, 0)), "reflect")
    found = set()
    for i in range(16):
        o = np.asarray(out[i])
        hits = [
            (y, x, flip)
            for y in range(9)
            for x in range(9)
            for flip in (False, True)
            if np.array_equal(o[:, ::-1] if flip else o, padded[i, y : y + 32, x : x + 32])
        ]
        assert hits, f"image {i} is not a crop of its padded input"
        found.add(hits[0])
    assert len({(y, x) for y, x, _ in found}) > 5 and len({f for *_, f in found}) == 2


def test_epoch_and_eval_indices():
    a = epoch_indices(jax.random.key(0), 10, 3)
    assert a.shape == (3, 3) and len(set(np.asarray(a).ravel().tolist())) == 9
    assert not np.array_equal(a, epoch_indices(jax.random.key(1), 10, 3))
    idx, mask = eval_indices(10, 4)
    assert idx.shape == mask.shape == (3, 4)
    assert sorted(idx[mask].tolist()) == list(range(10)) and mask.sum() == 10
    with pytest.raises(ValueError, match="larger than the dataset"):
        epoch_indices(jax.random.key(0), 3, 4)


def test_image_folder_reports_decoding_and_the_cache_on_stderr(tmp_path, capsys):
    _write_folder(tmp_path / "imgs", np.random.default_rng(1))
    load_image_folder(tmp_path / "imgs", cache_dir=tmp_path / "cache")
    err = capsys.readouterr().err  # pytest's stderr is not a terminal: plain lines
    assert f"decoding {tmp_path / 'imgs'} (first load only): 1/7 images (14%)" in err
    assert "7/7 images (100%)" in err and "decoded 7 images in" in err and "cached as" in err
    assert "\r" not in err and "\x1b[" not in err
    load_image_folder(tmp_path / "imgs", cache_dir=tmp_path / "cache")
    assert "7 images from the cache" in capsys.readouterr().err
    load_image_folder(tmp_path / "imgs", cache_dir=tmp_path / "cache", progress=False)
    # progress off: no progress lines; what was left out is still said (issue 21)
    assert capsys.readouterr().err.splitlines() == [
        f"note: {tmp_path / 'imgs'}: left out 1 file(s) that are not .jpg/.jpeg/.png images "
        "(apple/notes.txt)"
    ]
