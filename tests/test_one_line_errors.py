"""Issue 21, item 3: every refusal a user's input or file causes is ONE line on stderr,
``error: <message>``, exit code 2, no traceback (unless --traceback / JAXGRAD_TRACEBACK=1);
a bug in jaxgrad keeps its traceback.

The experiments run in-process through their entry point, ``jaxgrad.report.cli.run_main`` (what every
``python -m experiments.X`` calls); each case is refused before any training (seconds). One
subprocess checks the real command line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments import clip_contrastive as clip
from experiments import vit_cifar10 as vit
from jaxgrad.data.synthetic import CLASS_NAMES
from jaxgrad.errors import DataError, UserError
from jaxgrad.report.cli import one_line, run_main
from jaxgrad.training.params_file import save_params

ROOT = Path(__file__).resolve().parents[1]
STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"


def refused(capsys, module, argv) -> str:
    """Run ``module``'s entry point on ``argv``; assert exit 2 and one ``error:`` line, no
    traceback; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(module.main, module.Config, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert errors == [err.strip().splitlines()[-1]], err  # exactly one, and the last line
    return errors[0]


def folder(root: Path, classes=CLASS_NAMES, n=3, size=(32, 32), mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(px).convert(mode).save(root / name / f"{i}.png")
    return root


def vit_folder_argv(data: Path, tmp_path: Path, *extra) -> list[str]:
    return ["--tiny", "--data", "folder", "--data-dir", str(data), "--n-val", "5",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out"),
            *extra]  # fmt: skip


def test_corrupt_jpeg_in_the_training_folder(tmp_path, capsys):
    data = folder(tmp_path / "imgs")
    (data / CLASS_NAMES[3] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    line = refused(capsys, vit, vit_folder_argv(data, tmp_path))
    assert "cannot decode image" in line and "broken.jpg" in line and "remove or replace" in line
    assert not (tmp_path / "out").exists()  # refused before the out-dir


def test_too_few_images_for_the_val_split(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXGRAD_CACHE", str(tmp_path / "cache"))  # CLIP's image-folder cache
    data = folder(tmp_path / "imgs", n=2)  # 20 images
    line = refused(capsys, vit, vit_folder_argv(data, tmp_path) + ["--n-val", "20"])
    assert "--n-val 20 must be in (0, 20)" in line and "lower --n-val" in line
    clip_argv = ["--tiny", "--data", "folder", "--data-dir", str(data), "--n-val", "20",
                 "--out-dir", str(tmp_path / "c")]  # fmt: skip
    line = refused(capsys, clip, clip_argv)
    assert "--n-val" in line and "holds 20 images" in line


def test_class_count_mismatch(tmp_path, capsys):
    data = folder(tmp_path / "imgs", classes=CLASS_NAMES[:3], n=4)
    line = refused(capsys, vit, vit_folder_argv(data, tmp_path))
    assert "3 classes" in line and "expects" in line and "10 classes" in line


def test_images_of_another_size_than_the_model(tmp_path, capsys):
    data = folder(tmp_path / "imgs", size=(64, 64))
    line = refused(capsys, vit, vit_folder_argv(data, tmp_path))
    assert "(64, 64, 3)" in line and "(32, 32, 3)" in line and "resize" in line


def test_truncated_params_file_for_eval_only(tmp_path, capsys):
    params = tmp_path / "vit_params.npz"
    save_params(params, {"w": np.ones((64, 64), np.float32)})
    params.write_bytes(params.read_bytes()[:-100])
    data = folder(tmp_path / "imgs", n=1)
    argv = ["--eval-only", "--checkpoint", str(params), "--data-dir", str(data), "--model", "tiny"]
    line = refused(capsys, vit, argv)
    assert str(params) in line and "not a parameter file written by save_params" in line


def test_image_weights_folder_that_is_not_a_clip_checkpoint(tmp_path, capsys):
    weights = tmp_path / "bert"
    weights.mkdir()
    (weights / "config.json").write_text(json.dumps({"model_type": "bert"}))
    argv = ["--tiny", "--image-encoder", "clip", "--image-weights", str(weights),
            "--out-dir", str(tmp_path / "out")]  # fmt: skip
    line = refused(capsys, clip, argv)
    assert "config.json: model_type is 'bert', not a CLIP checkpoint" in line
    line = refused(capsys, clip, argv[:4] + [str(tmp_path / "nope"), *argv[5:]])
    assert "nope: not a directory" in line


def test_out_dir_refusals_and_a_resume_config_change_are_one_line(tmp_path, capsys):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("x")
    for module in (vit, clip):
        line = refused(capsys, module, ["--tiny", "--out-dir", str(tmp_path / "thesis")])
        assert "thesis.tex" in line and "no jaxgrad run marker" in line
    assert (tmp_path / "thesis" / "thesis.tex").read_text() == "x"
    (tmp_path / "afile").write_text("x")
    line = refused(capsys, clip, ["--tiny", "--out-dir", str(tmp_path / "afile")])
    assert "is a file, not a directory" in line
    from jaxgrad.training.runs import ResumeConfigError, compare_configs

    with pytest.raises(ResumeConfigError) as e:  # the multi-line refusal, joined
        compare_configs({"lr": 0.1, "seed": 0}, {"lr": 0.2, "seed": 1})
    text = one_line(str(e.value))
    assert "\n" not in text and "config: lr: 0.1 -> 0.2; seed: 0 -> 1; Run with" in text


def test_traceback_only_when_asked_and_bugs_keep_theirs(tmp_path, capsys, monkeypatch):
    argv = ["--tiny", "--out-dir", str(tmp_path / "afile"), "--traceback"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as e:
        run_main(clip.main, clip.Config, argv)
    err = capsys.readouterr().err
    assert (
        e.value.code == 2
        and "Traceback" in err
        and err.strip().splitlines()[-1].startswith("error: --out-dir ")
    )
    monkeypatch.setenv("JAXGRAD_TRACEBACK", "1")
    with pytest.raises(SystemExit):
        run_main(clip.main, clip.Config, argv[:-1])
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("JAXGRAD_TRACEBACK")

    def buggy(cfg):
        raise KeyError("a bug in jaxgrad")

    with pytest.raises(KeyError):  # not a UserError: propagates, traceback and all
        run_main(buggy, clip.Config, ["--tiny"])
    assert issubclass(DataError, UserError) and issubclass(DataError, ValueError)


def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("two years")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "experiments.clip_contrastive", "--tiny", "--out-dir",
           str(tmp_path / "thesis")]  # fmt: skip
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: --out-dir ")
    assert (tmp_path / "thesis" / "thesis.tex").read_text() == "two years"
