"""Issue 21, item 0: a run only ever deletes or replaces what it can prove it wrote.

Every out-dir a run did not create as the same kind of run keeps every byte (the tree is hashed
before and after): an image folder, a folder holding only thesis.tex, a finished non-tiny run,
another experiment's run, for ViT and CLIP. The run marker (jaxgrad.training.run_marker) is the proof;
the policy itself is tested on jaxgrad.training.runs.open_run_dir, the experiments in-process (each is
refused after loading its data, before any training: seconds).
"""

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments import clip_contrastive as clip
from experiments import vit_cifar10 as vit
from jaxgrad.errors import OutDirError
from jaxgrad.report.cli import parse
from jaxgrad.training.run_marker import MARKER_NAME, read_marker, write_marker
from jaxgrad.training.runs import LOCK_NAME, RunDirError, open_run_dir

ROOT = Path(__file__).resolve().parents[1]
STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"


def tree_hash(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` -> sha256 of its bytes ("dir" for a folder)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def image_folder(root: Path) -> Path:
    """10 class folders of 4 PNGs and a notes file: what a user's data folder looks like."""
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(4):
            px = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / f"class{c}" / f"{i}.png")
    (root / "notes.txt").write_text("where these images came from\n")
    return root


def thesis(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "thesis.tex").write_text("\\documentclass{article}\n% two years of work\n")
    return root


def vit_tiny(out, **kw):
    return dataclasses.replace(vit.Config.tiny(), out_dir=str(out), **kw)


def clip_tiny(out, **kw):
    base = dataclasses.replace(clip.Config.tiny(), steps=4, eval_every=4, log_every=2)
    return dataclasses.replace(base, out_dir=str(out), **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished NON-tiny runs of both experiments (tiny-sized, recorded as full runs), the ViT
    one with 2 epochs (two checkpoints, for the eval-only fallback below)."""
    root = tmp_path_factory.mktemp("runs")
    vit.main(vit_tiny(root / "vit", epochs=2, tiny_run=False, overwrite=False))
    clip.main(clip_tiny(root / "clip", tiny_run=False, overwrite=False))
    return {"vit": root / "vit", "clip": root / "clip"}


def _target(kind: str, runs: dict, tmp_path: Path) -> Path:
    dst = tmp_path / "out"
    if kind == "image folder":
        return image_folder(dst)
    if kind == "thesis":
        return thesis(dst)
    return Path(shutil.copytree(runs[kind], dst))


# (experiment, what --out-dir holds, flags, what the one-line refusal must say)
CASES = [
    ("vit", "image folder", {}, r"holds 41 files in 10 folders \(class0/.*no jaxgrad run marker"),
    ("vit", "image folder", {"overwrite": True}, "no jaxgrad run marker"),
    ("vit", "thesis", {}, r"holds 1 file \(thesis.tex\) and no jaxgrad run marker"),
    ("vit", "thesis", {"overwrite": True}, "thesis.tex"),
    ("vit", "thesis", {"resume": True}, "no jaxgrad run marker"),
    ("vit", "vit", {}, "non-tiny vit_cifar10 run.*replaces only a previous tiny run"),
    ("vit", "clip", {}, "clip_contrastive run .*not a vit_cifar10 run"),
    ("vit", "clip", {"overwrite": True}, "not a vit_cifar10 run"),
    ("vit", "clip", {"resume": True}, "not a vit_cifar10 run"),
    ("clip", "image folder", {}, "no jaxgrad run marker"),
    ("clip", "thesis", {}, r"holds 1 file \(thesis.tex\) and no jaxgrad run marker"),
    ("clip", "thesis", {"overwrite": True}, "thesis.tex"),
    ("clip", "clip", {}, "non-tiny clip_contrastive run.*replaces only a previous tiny run"),
    ("clip", "vit", {}, "vit_cifar10 run .*not a clip_contrastive run"),
    ("clip", "vit", {"overwrite": True}, "not a clip_contrastive run"),
]


@pytest.mark.parametrize("experiment, kind, flags, message", CASES)
def test_a_folder_the_run_did_not_write_keeps_every_byte(
    runs, tmp_path, experiment, kind, flags, message
):
    out = _target(kind, runs, tmp_path)
    before = tree_hash(out)
    build, main = (vit_tiny, vit.main) if experiment == "vit" else (clip_tiny, clip.main)
    with pytest.raises(RunDirError, match=message) as e:
        main(build(out, **flags))
    assert str(out) in str(e.value) and "\n" not in str(e.value)
    assert tree_hash(out) == before  # not a byte changed, no lock or marker left behind


def test_the_tiny_rerun_replaces_only_a_tiny_run_and_overwrite_only_the_same_experiment(tmp_path):
    out = tmp_path / "run"
    with open_run_dir(out, experiment="vit_cifar10", tiny=True) as run:
        first = run.marker
        (out / "metrics.jsonl").write_text("{}\n")
    with open_run_dir(out, experiment="vit_cifar10", rerun_tiny=True) as run:  # replaced
        assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, MARKER_NAME])
        assert run.marker.run_id != first.run_id and not run.marker.tiny
        (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RunDirError, match="replaces only a previous tiny run"):  # not tiny now
        open_run_dir(out, experiment="vit_cifar10", rerun_tiny=True)
    with pytest.raises(RunDirError, match="not a clip_contrastive run"):
        open_run_dir(out, experiment="clip_contrastive", overwrite=True)
    with open_run_dir(out, experiment="vit_cifar10", resume=True) as run:  # keeps its marker
        assert (out / "metrics.jsonl").exists() and run.marker == read_marker(out)
    with open_run_dir(out, experiment="vit_cifar10", overwrite=True, tiny=True) as run:
        assert not (out / "metrics.jsonl").exists() and read_marker(out).tiny


def test_a_marker_alone_is_an_empty_folder_and_a_broken_marker_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    write_marker(out, "clip_contrastive", tiny=False)  # a run that stopped before writing
    with open_run_dir(out, experiment="vit_cifar10") as run:  # nothing to lose: used
        assert read_marker(out) == run.marker and run.marker.experiment == "vit_cifar10"
    (out / MARKER_NAME).write_text("{not json")
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutDirError, match=r"\.jaxgrad-run\.json is not a readable jaxgrad run"):
        open_run_dir(out, experiment="vit_cifar10", overwrite=True)
    assert (out / "keep.txt").read_text() == "x" and not (out / LOCK_NAME).exists()


# orbax/tensorstore's reads of the corrupt checkpoint call back into their closed asyncio loop
# when collected; jaxgrad.training.checkpoint filters exactly those (checked in the subprocess below).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_eval_only_falling_back_names_the_epoch_it_scored_and_shows_no_orbax_noise(
    runs, tmp_path, capsys
):
    run = Path(shutil.copytree(runs["vit"], tmp_path / "run"))
    for f in (run / "ckpt" / "2" / "state").glob("ocdbt.process_0/d/*"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # the arrays, not the metadata
    data = tmp_path / "imgs"  # the synthetic set's class names, 32x32
    from jaxgrad.data.synthetic import CLASS_NAMES

    rng = np.random.default_rng(1)
    for name in CLASS_NAMES:
        (data / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            data / name / "0.png"
        )
    argv = ["--eval-only", "--checkpoint", str(run / "ckpt"), "--data-dir", str(data),
            "--model", "tiny", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    res = vit.main(parse(vit.Config, argv))
    assert res["scored"].startswith(f"{run / 'ckpt' / '1'} (epoch 1; newer ")
    assert f"{res['scored']}: accuracy" in capsys.readouterr().out
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-m", "experiments.vit_cifar10", *argv], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert "(epoch 1; newer" in p.stdout and "ckpt/2 is corrupt" in p.stderr
    assert "Event loop is closed" not in p.stderr and "Traceback" not in p.stderr
