"""experiments.vit_cifar10 end to end on the tiny config and the embedded synthetic data.

One straight 3-epoch run is shared; compiled programs are cached per process, so the other
runs here (resume, eval-only, tour) cost no new compilation.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import vit_cifar10 as exp
from jaxgrad.models.vit import ViT
from jaxgrad.report.cli import parse
from jaxgrad.report.io import JsonlLogger
from jaxgrad.training.loop import abstract_params
from jaxgrad.training.params_file import load_params
from jaxgrad.training.runs import RunDirError

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    cfg = dataclasses.replace(exp.Config.tiny(), out_dir=str(out))
    return cfg, exp.main(cfg), out


def test_tiny_training_lowers_loss_and_learns(straight):
    cfg, summary, out = straight
    hist = JsonlLogger(out / "metrics.jsonl").read()
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] - 0.3
    assert hist[-1]["val_accuracy"] > max(0.5, hist[0]["val_accuracy"])  # chance is 0.1
    assert summary["val_accuracy"] == hist[-1]["val_accuracy"]
    assert len(hist[0]["step_losses"]) == (1200 - 200) // 40  # tiny: batch 40, 25 steps


def test_every_output_is_written_and_says_synthetic(straight):
    cfg, summary, out = straight
    names = {p.name for p in out.iterdir()}
    assert {"metrics.jsonl", "curves.png", "ckpt", "vit_params.npz", "summary.json"} <= names
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "NOT real CIFAR-10" in json.loads((out / "summary.json").read_text())["data"]
    assert all("NOT real CIFAR-10" in r["data"] for r in JsonlLogger(out / "metrics.jsonl").read())
    assert sorted(int(p.name) for p in (out / "ckpt").iterdir()) == [1, 2, 3]
    assert summary["params"] == 21_130


def test_resume_continues_exactly(straight, tmp_path):
    cfg, _, out = straight
    part = dataclasses.replace(cfg, out_dir=str(tmp_path), epochs=2, overwrite=False)
    exp.main(part)
    with pytest.raises(RunDirError, match="--resume"):  # never silently restart over a run
        exp.main(part)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # killed after logging epoch 3, mid-write
        f.write(json.dumps({"epoch": 3, "step_losses": []}) + '\n{"epoch": 4, "trai')
    resumed = exp.main(dataclasses.replace(cfg, out_dir=str(tmp_path), resume=True))
    a = JsonlLogger(out / "metrics.jsonl").read()
    b = JsonlLogger(tmp_path / "metrics.jsonl").read()
    assert [r["epoch"] for r in b if "epoch" in r] == [1, 2, 3]  # unsaved epoch, torn line gone
    assert [r["changes"] for r in b if "epoch" not in r] == [[{"field": "epochs", "old": 2, "new": 3}]]  # fmt: skip
    b = [r for r in b if "epoch" in r]
    assert [r["step_losses"] for r in a] == [r["step_losses"] for r in b]  # same seed, same losses
    like = load_params(out / "vit_params.npz", _abstract(cfg))
    jax.tree.map(
        np.testing.assert_array_equal, like, load_params(tmp_path / "vit_params.npz", like)
    )
    assert resumed["val_accuracy"] == a[-1]["val_accuracy"]


def _abstract(cfg):
    return abstract_params(ViT, cfg.vit())[1]


def test_eval_only_on_an_image_folder_from_params_and_checkpoint(straight, tmp_path):
    cfg, _, out = straight
    ds, _, _ = exp.load_data(cfg)
    for i in range(30):
        d = tmp_path / "folder" / ds.class_names[ds.labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.images[i]).save(d / f"{i}.png")
    # a folder has only the classes it holds: keep all 10 so the labels line up
    for name in ds.class_names:
        (tmp_path / "folder" / name).mkdir(exist_ok=True)
        Image.fromarray(ds.images[0]).save(tmp_path / "folder" / name / "x.png")
    base = dict(eval_only=True, data_dir=str(tmp_path / "folder"), cache_dir=str(tmp_path / "c"))
    a = exp.main(dataclasses.replace(cfg, checkpoint=str(out / "vit_params.npz"), **base))
    b = exp.main(dataclasses.replace(cfg, checkpoint=str(out / "ckpt"), **base))
    assert a["n"] == 40 and a["accuracy"] == b["accuracy"]
    assert a["accuracy"] > 0.5  # the training images themselves


def test_cli_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit):
        parse(exp.Config, ["--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(exp.Config):
        assert "--" + f.name.replace("_", "-") in text
    for argv in (["--data", "cifar10"], ["--batch-size", "-1"], ["--recipe", "fast"]):
        with pytest.raises(SystemExit) as e:
            parse(exp.Config, argv)
        assert e.value.code == 2
    cfg = parse(exp.Config, ["--recipe", "strong", "--epochs", "7"])
    h = cfg.hyper()
    assert (h.epochs, h.batch_size, h.augment, h.dtype) == (7, 512, True, "bfloat16")
    assert exp.Config().hyper() == exp.RECIPES["seed"]


def test_tour_row_says_synthetic():
    (row,) = exp.tour()
    assert "SYNTHETIC" in row.scenario and row.match


def test_train_limit_draws_from_every_class_of_a_class_ordered_folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in range(10):
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / "f" / name / f"{i}.png")
    cfg = exp.Config(
        data="folder", data_dir=str(tmp_path / "f"), cache_dir=str(tmp_path / "c"),
        n_val=6, train_limit=12,
    )  # fmt: skip
    train, val, name = exp.load_data(cfg)
    assert (len(train), len(val), name) == (12, 6, "val")
    assert set(train.labels.tolist()) == {0, 1, 2}  # not just the first class's files


def test_jsonl_rewind_keeps_accepted_records_and_drops_a_torn_last_line(tmp_path):
    log = JsonlLogger(tmp_path / "m.jsonl")
    for step in (1, 2, 3):
        log.log(step=step, loss=np.float32(1 / step))
    with open(log.path, "a") as f:
        f.write('{"step": 4, "lo')
    assert log.rewind(lambda r: r["step"] <= 2) == 2
    assert log.read() == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    log.path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')  # a broken line mid-file is not a kill
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        log.rewind(lambda r: True)
    assert JsonlLogger(tmp_path / "absent.jsonl").rewind(lambda r: True) == 0
