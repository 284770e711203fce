"""Issue 13, library part: each wrong input, changed config or corrupt state is refused clearly.

One test (or a few) per item of the issue; each was seen failing on the code before the fix.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgrad.report.io import JsonlLogger
from jaxgrad.training.run_marker import MARKER_NAME
from jaxgrad.training.runs import (
    LOCK_NAME,
    ResumeConfigError,
    RunDirError,
    check_resumable,
    compare_configs,
    open_run_dir,
    rewind_metrics,
)

# ---- 1. resume config ------------------------------------------------------------------------


def test_resume_refuses_changed_config_listing_each_field_old_to_new():
    old = {"epochs": 3, "lr": 0.01, "batch_size": 64, "seed": 0, "dim": 32}
    new = {"epochs": 4, "lr": 0.05, "batch_size": 64, "seed": 1, "dim": 64}
    with pytest.raises(ResumeConfigError) as e:
        compare_configs(old, new)
    msg = str(e.value)
    assert "lr: 0.01 -> 0.05" in msg and "seed: 0 -> 1" in msg and "dim: 32 -> 64" in msg
    assert "epochs" not in msg.split("\n", 1)[1].split("Run with")[0]  # growth is allowed
    assert "--resume-override dim,lr,seed" in msg
    # named overrides and epoch growth are accepted and returned for the log
    got = compare_configs(old, new, overrides=["lr", "seed", "dim"])
    assert [(c.field, c.old, c.new) for c in got] == [
        ("dim", 32, 64), ("epochs", 3, 4), ("lr", 0.01, 0.05), ("seed", 0, 1)
    ]  # fmt: skip
    with pytest.raises(ResumeConfigError, match="epochs: 3 -> 2"):
        compare_configs(old, {**old, "epochs": 2})  # shrinking is not growth
    with pytest.raises(ResumeConfigError, match="not config fields"):
        compare_configs(old, old, overrides=["lrr"])
    assert compare_configs(old, dict(old)) == []


def test_resume_without_checkpoint_is_refused_unless_start_fresh(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint.*--resume-or-start"):
        check_resumable(None, ckpt_dir=tmp_path)
    assert check_resumable(None, ckpt_dir=tmp_path, start_fresh=True) is False
    assert "starting fresh" in capsys.readouterr().err
    assert check_resumable(3, ckpt_dir=tmp_path) is True


@pytest.mark.parametrize(
    "logged, ckpt_epoch",
    [
        ([1], None),  # killed during the first save: no checkpoint
        ([1, 2], 1),  # killed between logging epoch 2 and committing its checkpoint
        ([1, 2], 2),  # killed after the save
    ],
)
def test_rewind_leaves_every_epoch_once_in_every_interruption_case(tmp_path, logged, ckpt_epoch):
    log = JsonlLogger(tmp_path / "metrics.jsonl")
    for e in logged:
        log.log(epoch=e, loss=1.0 / e)
    with open(log.path, "a") as f:
        f.write('{"epoch": 3, "lo')  # torn by the kill
    rewind_metrics(log, last_epoch=ckpt_epoch)
    for e in range((ckpt_epoch or 0) + 1, 4):  # the resumed run logs the rest
        log.log(epoch=e, loss=1.0 / e)
    assert [r["epoch"] for r in log.read()] == [1, 2, 3]


# ---- 2. out dir lock and re-run policy -------------------------------------------------------


def test_second_live_run_refused_stale_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    first = open_run_dir(out, experiment="test")
    with pytest.raises(RunDirError, match=f"in use by a running process \\(pid {os.getpid()}"):
        open_run_dir(out, experiment="test")
    first.release()
    # a lock left by a process that no longer exists
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    holder = json.loads((out / LOCK_NAME).read_text()) if (out / LOCK_NAME).exists() else None
    assert holder is None  # released
    import socket

    (out / LOCK_NAME).write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": 0})
    )
    with open_run_dir(out, experiment="test") as run:
        assert "taking over stale lock" in capsys.readouterr().err
        assert json.loads(run.lock.read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


def test_directory_holding_a_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    with open_run_dir(out, experiment="test"):
        (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
        (out / "ckpt").mkdir()
        (out / "ckpt" / "1").mkdir()
    with pytest.raises(RunDirError, match="--resume.*--out-dir.*--overwrite"):
        open_run_dir(out, experiment="test")
    with open_run_dir(out, experiment="test", resume=True):
        assert (out / "metrics.jsonl").exists()
    outside = tmp_path / "keep.txt"
    outside.write_text("x")
    with open_run_dir(out, experiment="test", overwrite=True):
        assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, MARKER_NAME])
    assert outside.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        open_run_dir(tmp_path / "file", experiment="test")


# ---- 3. config validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, argv, flag",
    [
        ("pinn_poisson", ["--lr", "nan"], "--lr must be a finite number"),
        ("pinn_poisson", ["--smoothing", "1"], "--smoothing must be < 1"),
        ("pinn_helmholtz", ["--lam", "inf"], "--lam must be a finite number"),
        ("pinn_helmholtz", ["--decay", "-0.5"], "--decay must be > 0"),
        ("scalar_derivative", ["--weight-decay=-5"], "--weight-decay must be >= 0"),
        ("scalar_derivative", ["--x", "nan"], "--x must be a finite number"),
        ("optimizer_step", ["--lr2=-inf"], "--lr2 must be a finite number"),
        ("doctor_demo", ["--lr", "inf"], "--lr must be a finite number"),
        ("vjp", ["--cotangent", "1", "nan"], "--cotangent must be a finite number"),
    ],
)
def test_every_experiment_float_flag_rejects_nonfinite_and_out_of_range(module, argv, flag, capsys):
    import importlib

    from jaxgrad.report.cli import parse

    cfg_cls = importlib.import_module(f"experiments.{module}").Config
    with pytest.raises(SystemExit) as e:
        parse(cfg_cls, argv)
    assert e.value.code == 2 and flag in capsys.readouterr().err
    with pytest.raises(ValueError, match=flag.split(" must")[0]):  # built directly, too
        cfg_cls(**{argv[0].lstrip("-").split("=")[0].replace("-", "_"): float("nan")})


_CONFIG_MODULES = sorted(
    p.stem
    for p in (Path(__file__).resolve().parents[1] / "experiments").glob("*.py")
    if "\nclass Config(" in p.read_text()
)


@pytest.mark.parametrize("module", _CONFIG_MODULES)
def test_every_experiment_config_is_checked_however_it_is_built(module):
    """Every experiment's Config is a CheckedConfig: a non-finite float is refused, by flag name,
    when the config is built in code as well as when it is parsed."""
    import dataclasses
    import importlib

    from jaxgrad.errors import ConfigError
    from jaxgrad.report.cli import CheckedConfig

    cfg_cls = importlib.import_module(f"experiments.{module}").Config
    assert issubclass(cfg_cls, CheckedConfig)
    floats = [f.name for f in dataclasses.fields(cfg_cls) if f.type.startswith("float")]
    for name in floats:
        with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be a finite"):
            dataclasses.replace(cfg_cls.tiny(), **{name: float("nan")})


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("pinn_poisson", ["--methods"], "--methods needs at least one method"),
        ("pinn_helmholtz", ["--variants"], "--variants need at least one value"),
    ],
)
def test_an_empty_list_of_runs_is_refused_not_an_index_error(module, argv, message, capsys):
    import importlib

    from jaxgrad.report.cli import parse

    with pytest.raises(SystemExit) as e:
        parse(importlib.import_module(f"experiments.{module}").Config, argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_option_bounds_checked_for_any_config():
    import dataclasses

    from jaxgrad.report.cli import check_config, option, parse

    @dataclasses.dataclass(frozen=True)
    class Config:
        label_smoothing: float = option(0.0, "a probability", ge=0, lt=1)
        warmup: float | None = option(None, "warm-up epochs", ge=0)
        scales: tuple[float, ...] = option((1.0,), "scales", gt=0)

    check_config(Config())
    for argv, msg in [
        (["--label-smoothing", "2"], "--label-smoothing must be < 1, got 2.0"),
        (["--label-smoothing", "-0.1"], "--label-smoothing must be >= 0"),
        (["--warmup", "-2"], "--warmup must be >= 0, got -2.0"),
        (["--scales", "1", "0"], "--scales must be > 0, got 0.0"),
        (["--warmup", "nan"], "--warmup must be a finite number"),
    ]:
        with pytest.raises(SystemExit):
            parse(Config, argv)
        with pytest.raises(ValueError, match=msg.replace("(", "\\(")):
            check_config(_build(Config, argv))


def _build(cls, argv):
    import dataclasses

    name = argv[0][2:].replace("-", "_")
    vals = [float(v) for v in argv[1:]]
    return dataclasses.replace(cls(), **{name: tuple(vals) if len(vals) > 1 else vals[0]})


# ---- 4. guard: loss, update and new params are watched; no non-finite checkpoint -------------


def _linear(params, batch, key):
    del key
    return jnp.sum(params["w"] * batch), {}  # gradient = batch: always finite


@pytest.mark.parametrize(
    "opt, loss_fn, what",
    [
        (lambda: optax.sgd(float("nan")), _linear, "lr=nan: finite gradient, NaN update"),
        (lambda: optax.sgd(1e38), _linear, "finite update, -3e38 - 1e38 overflows to -inf"),
        (
            lambda: optax.sgd(0.1),
            lambda p, b, k: (_linear(p, b, k)[0] + jax.lax.stop_gradient(jnp.inf), {}),
            "non-finite loss with a finite gradient",
        ),
    ],
)
def test_guard_skips_update_that_would_make_params_or_loss_nonfinite(opt, loss_fn, what):
    from jaxgrad.training.guard import NonFiniteError, check_nonfinite, skip_nonfinite
    from jaxgrad.training.step import init_train_state, make_train_step

    w0 = jnp.array([1.0, -2.0, -3e38], jnp.float32)
    optimizer = skip_nonfinite(opt())
    state = init_train_state({"w": w0}, optimizer)
    step = make_train_step(loss_fn, optimizer, donate=False)
    for _ in range(3):
        state, _ = step(state, jnp.ones(3, jnp.float32), jax.random.key(0))
    np.testing.assert_array_equal(state.params["w"], w0, err_msg=what)
    with pytest.raises(NonFiniteError, match="loss, gradient, update or new parameter"):
        check_nonfinite(state.opt_state, max_in_a_row=3)


def test_nonfinite_state_is_refused_before_checkpointing():
    from jaxgrad.training.guard import NonFiniteError, check_finite_state

    check_finite_state({"w": jnp.ones(3), "step": jnp.int32(3), "key": jax.random.key(0)})
    bad = {"w": jnp.ones(3), "layers": [{"b": jnp.array([0.0, jnp.nan])}]}
    with pytest.raises(NonFiniteError, match=r"\['layers'\]\[0\]\['b'\].*not saved"):
        check_finite_state(bad)


# ---- 5. checkpoints --------------------------------------------------------------------------


def test_restore_names_each_leaf_whose_shape_dtype_or_path_differs(tmp_path):
    from jaxgrad.training.checkpoint import Checkpointer, CheckpointMismatchError

    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(1, {"w": jnp.arange(2.0), "b": jnp.zeros(3)})
        like = {"w": jnp.zeros(3, jnp.int32), "b": jnp.zeros(3), "extra": jnp.zeros(1)}
        with pytest.raises(CheckpointMismatchError) as e:
            ckpt.restore(like)
    msg = str(e.value)
    assert "w: saved float32[2], expected int32[3]" in msg
    assert "extra: missing from the checkpoint" in msg and "b:" not in msg


def _corrupt(step_dir):
    for f in step_dir.glob("state/**/d/*"):
        f.write_bytes(f.read_bytes()[:10])


def test_corrupt_latest_checkpoint_is_called_corrupt_and_resume_falls_back(tmp_path, capsys):
    from jaxgrad.training.checkpoint import Checkpointer, CorruptCheckpointError

    like = {"w": jnp.zeros(4)}
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(1, {"w": jnp.full(4, 1.0)}, meta={"epoch": 1})
        ckpt.save(2, {"w": jnp.full(4, 2.0)}, meta={"epoch": 2})
    _corrupt(tmp_path / "c" / "2")
    with Checkpointer(tmp_path / "c") as ckpt:  # a fresh process resuming
        with pytest.raises(CorruptCheckpointError, match=r"c/2 is corrupt"):
            ckpt.restore(like)
        tree, meta, step = ckpt.restore_latest(like)
    assert step == 1 and meta == {"epoch": 1}
    np.testing.assert_array_equal(tree["w"], np.full(4, 1.0))
    err = capsys.readouterr().err
    assert "c/2 is corrupt" in err and "resuming from older checkpoint" in err


@pytest.mark.parametrize("async_save", [False, True])
def test_sigint_during_save_finishes_the_save_then_stops(tmp_path, monkeypatch, async_save):
    import signal

    from jaxgrad.training.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path / "c", async_save=async_save)
    real_save = ckpt._mngr.save

    def save_with_signal(*a, **k):  # the signal lands inside the save, deterministically
        os.kill(os.getpid(), signal.SIGINT)
        return real_save(*a, **k)

    monkeypatch.setattr(ckpt._mngr, "save", save_with_signal)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(3, {"w": jnp.ones(5)}, meta={"epoch": 3})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["3"]  # committed, no tmp
    assert ckpt.latest_step() == 3
    ckpt.close()


def test_sigterm_during_save_reaches_the_previous_handler(tmp_path, monkeypatch):
    import signal

    from jaxgrad.training.checkpoint import Checkpointer

    seen = []
    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with Checkpointer(tmp_path / "c") as ckpt:
            real_save = ckpt._mngr.save

            def save_with_signal(*a, **k):
                os.kill(os.getpid(), signal.SIGTERM)
                assert not seen  # held while the save runs
                return real_save(*a, **k)

            monkeypatch.setattr(ckpt._mngr, "save", save_with_signal)
            ckpt.save(1, {"w": jnp.ones(2)})
            assert seen == [signal.SIGTERM] and ckpt.latest_step() == 1
    finally:
        signal.signal(signal.SIGTERM, old)


def test_meta_with_numpy_scalars_is_converted_and_bad_meta_writes_nothing(tmp_path):
    from jaxgrad.training.checkpoint import Checkpointer

    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(1, {"w": jnp.ones(2)}, meta={"x": np.float32(1.5), "n": np.int64(3)})
        assert ckpt.read_meta(1) == {"x": 1.5, "n": 3}
        with pytest.raises(TypeError, match="meta is not JSON-able.*nothing was written"):
            ckpt.save(2, {"w": jnp.ones(2)}, meta={"f": object()})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["1"]


# ---- 6. labels outside [0, num_classes) ------------------------------------------------------


def test_cross_entropy_matches_torch_definition_and_refuses_bad_labels():
    from jaxgrad.losses.classification import cross_entropy

    logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], jnp.float32)
    labels = jnp.array([2, 1])
    logp = jax.nn.log_softmax(logits)
    nll = -(logp[0, 2] + logp[1, 1]) / 2
    smooth = 0.8 * nll + 0.2 * -jnp.mean(logp)  # (1 - s)·nll + s·mean_k(-log p_k)
    np.testing.assert_allclose(cross_entropy(logits, labels), nll, rtol=1e-6)
    np.testing.assert_allclose(
        cross_entropy(logits, labels, label_smoothing=0.2), smooth, rtol=1e-6
    )
    for bad in ([2, 3], [-1, 0], [2, 99]):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            cross_entropy(logits, jnp.array(bad))  # concrete: refused on the host
        loss, g = jax.jit(jax.value_and_grad(cross_entropy))(logits, jnp.array(bad))
        assert np.isnan(loss)  # traced: NaN, which the guard stops on
        assert np.all(np.isfinite(g))  # ...without poisoning the parameters
    with pytest.raises(TypeError, match="integer class indices"):
        cross_entropy(logits, jnp.array([0.7, 1.0]))


@pytest.mark.parametrize("name", ["seed_contrastive_loss", "clip_loss", "siglip_loss"])
def test_contrastive_losses_refuse_out_of_range_class_labels(name):
    import jaxgrad.losses.contrastive as C

    f = jax.random.normal(jax.random.key(0), (4, 8))
    kw = dict(image_features=f, text_features=f[::-1], logit_scale=jnp.float32(1.0))
    if name == "siglip_loss":
        kw["logit_bias"] = jnp.float32(-1.0)
    loss = getattr(C, name)
    good, _ = loss(**kw, class_labels=jnp.array([0, 9, 3, 1]), num_classes=10)
    assert np.isfinite(good) and good == loss(**kw)[0]
    for bad in ([0, 10, 3, 1], [500, 0, 0, 0], [-1, 0, 0, 0]):
        with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 10\)"):
            loss(**kw, class_labels=jnp.array(bad), num_classes=10)
        traced = jax.jit(lambda lab: loss(**kw, class_labels=lab, num_classes=10)[0])
        assert np.isnan(traced(jnp.array(bad)))


# ---- 7. CIFAR-10 python batches: md5 and a restricted unpickler ------------------------------


class _RunsCode:
    def __reduce__(self):  # what a crafted batches.meta does
        return (os.system, ("touch MARKER",))


def _cifar_dir(tmp_path, meta=None, rows=10, batch=None):
    import pickle

    from jaxgrad.data import cifar10

    folder = tmp_path / cifar10.FOLDER
    folder.mkdir(exist_ok=True)
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]} if meta is None else meta
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    rng = np.random.default_rng(0)
    for name in (*cifar10.TRAIN_BATCHES, *cifar10.TEST_BATCHES):
        b = {b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, rows).tolist()}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch(b) if batch else b))
    return folder


def test_cifar_batch_with_unofficial_md5_is_not_unpickled(tmp_path, monkeypatch):
    from jaxgrad.data import cifar10

    monkeypatch.chdir(tmp_path)
    folder = _cifar_dir(tmp_path, meta={b"label_names": _RunsCode()})
    with pytest.raises(ValueError, match=r"batches.meta has md5 \w+, not the official 5ff9c5"):
        cifar10.load_cifar10(tmp_path)
    assert not (tmp_path / "MARKER").exists()
    # a re-pickled copy skips the md5; the restricted unpickler still refuses the payload
    with pytest.raises(ValueError, match=r"batches.meta: refused to load posix.system"):
        cifar10.load_cifar10(tmp_path, batch_md5=None)
    assert not (tmp_path / "MARKER").exists()
    # ...and admits an honest re-pickled copy (numpy arrays, lists, bytes)
    monkeypatch.setattr(cifar10, "ROWS_PER_BATCH", 10)
    _cifar_dir(tmp_path)
    ds = cifar10.load_cifar10(folder, batch_md5=None)
    assert ds.images.shape == (50, 32, 32, 3) and ds.labels.dtype == np.int32


# ---- 9. item 11's messages -------------------------------------------------------------------


@pytest.mark.parametrize(
    "meta, batch, match",
    [
        (None, lambda b: {b"data": b[b"data"]}, r"data_batch_1 has no \[b'labels'\]"),
        (None, lambda b: {**b, b"data": b[b"data"][:, :3000]}, r"rows of 3072 bytes"),
        ([b"a"] * 10, None, r"batches.meta holds a list, not a dict"),
        (None, None, r"data_batch_1 has 100 images, the official batches 10000"),
        (None, lambda b: {**b, b"labels": [0.7] * 100}, r"labels' is float64.*integer"),
    ],
)
def test_malformed_cifar_batches_name_the_file(tmp_path, meta, batch, match):
    from jaxgrad.data import cifar10

    _cifar_dir(tmp_path, meta=meta, rows=100, batch=batch)
    with pytest.raises(ValueError, match=match):
        cifar10.load_cifar10(tmp_path, batch_md5=None)


# ---- 8. gradient bookkeeping: custom_vjp rules, refs -----------------------------------------


@jax.custom_vjp
def _fused_sq(x):
    return jnp.sum(x**2)


_fused_sq.defvjp(lambda x: (_fused_sq(x), x), lambda x, ct: (2 * x,))  # assumes ct == 1


@jax.custom_vjp
def _none_rule(x):
    return jnp.sum(x)


_none_rule.defvjp(lambda x: (jnp.sum(x), None), lambda r, ct: (None,))


@jax.custom_vjp
def _zeros_rule(x):
    return jnp.sum(x)


_zeros_rule.defvjp(lambda x: (jnp.sum(x), None), lambda r, ct: (jnp.zeros(3),))


def _five(x, y, z, w, u):
    return _fused_sq(x) + jax.lax.stop_gradient(y).sum() + _none_rule(w) + _zeros_rule(u)


def test_custom_vjp_ignoring_cotangent_counts_as_used_provable_zeros_do_not():
    import jaxgrad
    from jaxgrad.inspect.doctor import grad_flow

    args = [jnp.arange(3.0) + 1] * 4 + [jnp.ones(3)]
    want = jax.grad(_five, argnums=(0, 1, 2, 3, 4))(*args)
    got = jaxgrad.grad(_five, argnums=(0, 1, 2, 3, 4), allow_unused=True)(*args)
    np.testing.assert_array_equal(got[0], want[0])  # 2x, the real gradient (was None)
    assert got[1:] == (None, None, None, None)  # stop_gradient, unused, None rule, zeros rule
    assert all(not np.any(w) for w in want[1:])  # jax.grad agrees: they are zeros
    np.testing.assert_array_equal(jaxgrad.grad(_fused_sq)(args[0]), 2 * args[0])  # no raise
    report = grad_flow(lambda p: _five(p["x"], p["y"], p["z"], p["w"], p["u"]),
                       dict(zip("xyzwu", args)))  # fmt: skip
    status = {r.path: r.status for r in report.leaves}
    assert status == {"x": "connected", "y": "blocked", "z": "unused", "w": "blocked",
                      "u": "blocked"}  # fmt: skip


def test_reads_through_refs_count_as_data_dependence():
    from jaxgrad.autodiff.deps import data_dependence

    def written_then_read(a, b):
        r = jax.new_ref(jnp.zeros(3))
        r[...] = b * 3
        return a + r[...]

    def accumulated(a, b):
        r = jax.new_ref(jnp.zeros(3))
        r[...] += b
        return a * 2 + r[...]

    assert data_dependence(written_then_read, jnp.ones(3), jnp.ones(3)) == [True, True]
    assert data_dependence(accumulated, jnp.ones(3), jnp.ones(3)) == [True, True]


def test_cache_dir_under_a_regular_file_names_it(tmp_path):
    from PIL import Image

    from jaxgrad.data.imagefolder import load_image_folder

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / c / "0.png")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"afile is a regular file. Pick another --cache-dir"):
        load_image_folder(tmp_path / "imgs", cache_dir=tmp_path / "afile" / "cache")


def test_one_class_folder_says_two_classes_needed(tmp_path):
    from PIL import Image

    from jaxgrad.data.imagefolder import load_image_folder

    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "cat" / "0.png")
    with pytest.raises(ValueError, match=r"has 1 class folder\(s\) \(cat\).*at least 2") as e:
        load_image_folder(tmp_path / "imgs", cache_dir=tmp_path / "cache")
    assert "resize" not in str(e.value)


@pytest.mark.parametrize("content", [b"\x93NUMPY random bytes" * 10, "truncated"])
def test_load_params_on_garbage_names_the_path_not_allow_pickle(tmp_path, content):
    from jaxgrad.training.params_file import load_params, save_params

    like = {"w": jnp.ones(3), "b": jnp.zeros(2)}
    path = tmp_path / "params.npz"
    if content == "truncated":
        save_params(path, like)
        content = path.read_bytes()[:-40]
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        load_params(path, like)
    assert str(path) in str(e.value) and "allow_pickle" not in str(e.value)
    assert "not a parameter file written by save_params" in str(e.value)


def test_frozen_pattern_matching_nothing_is_an_error():
    from jaxgrad.autodiff.freeze import frozen_mask

    params = {"encoder": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(2), "b": jnp.ones(1)}}
    assert frozen_mask(params, ["encoder", "head/b"]) == {
        "encoder": {"w": True}, "head": {"w": False, "b": True}
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"'typo' matches no parameter.*encoder, head"):
        frozen_mask(params, ["encoder", "typo"])


def test_grad_argnums_out_of_range_is_a_clear_error():
    import jaxgrad

    g = jaxgrad.grad(lambda x, y: jnp.sum(x * y), argnums=2)
    with pytest.raises(ValueError, match=r"argnums=2 asks for argument 2.*2 positional"):
        g(jnp.ones(2), jnp.ones(2))
