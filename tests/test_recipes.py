"""The resolved recipes of experiments.vit_cifar10 (``RECIPES`` in jaxgrad/tasks/classifier.py),
pinned value by value: each ``--recipe`` (seed, strong, cpu: its own model, patch 8, dim 128,
depth 4, no dropout) and a few flag combinations on top (flags override the recipe's model and
values, ``--model tiny`` stays tiny) resolve to exactly these ``Hyper`` and ``ViTConfig`` values,
and record exactly this config in a checkpoint (what ``--resume`` compares, so a change here
would refuse to resume every earlier run)."""

import dataclasses

import numpy as np
import pytest

from experiments.vit_cifar10 import Config
from jaxgrad.data import ImageDataset
from jaxgrad.report.cli import parse
from jaxgrad.tasks.classifier import Hyper

SEED = dict(epochs=10, batch_size=64, lr=1e-3, optimizer="adam", weight_decay=0.0,
            warmup_epochs=0.0, schedule="constant", label_smoothing=0.0, augment=False,
            dtype="float32", nonfinite_guard=True, mix=0.0, arch=())  # fmt: skip
STRONG = dict(epochs=100, batch_size=512, lr=1e-3, optimizer="adamw", weight_decay=0.05,
              warmup_epochs=5.0, schedule="cosine", label_smoothing=0.1, augment=True,
              dtype="bfloat16", nonfinite_guard=True, mix=0.0, arch=())  # fmt: skip
CPU_ARCH = (("patch_size", 8), ("dim", 128), ("depth", 4), ("heads", 4), ("dim_head", 32),
            ("mlp_dim", 256), ("dropout", 0.0), ("emb_dropout", 0.0), ("pool", "mean"))  # fmt: skip
CPU = dict(epochs=21, batch_size=128, lr=2e-3, optimizer="adamw", weight_decay=0.05,
           warmup_epochs=0.5, schedule="cosine", label_smoothing=0.1, augment=True,
           dtype="float32", nonfinite_guard=True, mix=0.0, arch=CPU_ARCH)  # fmt: skip
SEED_VIT = dict(image_size=32, patch_size=4, num_classes=10, dim=512, depth=6, heads=8,
                mlp_dim=1024, dim_head=64, dropout=0.1, emb_dropout=0.1, channels=3, pool="cls",
                dtype="float32", attn_dropout=True, attention="auto")  # fmt: skip
CPU_VIT = {**SEED_VIT, **dict(CPU_ARCH)}
TINY_VIT = {**SEED_VIT, "dim": 32, "depth": 2, "heads": 2, "mlp_dim": 64, "dim_head": 16}

# name: (argv, hyper, vit)
CASES = {
    "seed": ([], SEED, SEED_VIT),
    "strong": (["--recipe", "strong"], STRONG, {**SEED_VIT, "dtype": "bfloat16"}),
    "cpu": (["--recipe", "cpu"], CPU, CPU_VIT),
    "cpu+flags": (
        ["--recipe", "cpu", "--dim", "96", "--no-attn-dropout", "--mix", "0.5"],
        {**CPU, "mix": 0.5}, {**CPU_VIT, "dim": 96, "attn_dropout": False},
    ),
    "cpu+zeros": (  # 0 / off given on the command line override the recipe (not "unset")
        ["--recipe", "cpu", "--weight-decay", "0", "--warmup-epochs", "0",
         "--label-smoothing", "0", "--no-augment"],
        {**CPU, "weight_decay": 0.0, "warmup_epochs": 0.0, "label_smoothing": 0.0,
         "augment": False}, CPU_VIT,
    ),
    "cpu+tiny": (["--recipe", "cpu", "--model", "tiny"], CPU, TINY_VIT),  # tiny stays tiny
    "strong+flags": (
        ["--recipe", "strong", "--epochs", "7", "--lr", "5e-4", "--dtype", "float32",
         "--no-nonfinite-guard", "--batch-size", "256"],
        {**STRONG, "epochs": 7, "lr": 5e-4, "dtype": "float32", "nonfinite_guard": False,
         "batch_size": 256}, SEED_VIT,
    ),
    "seed+tiny": (
        ["--model", "tiny", "--depth", "2", "--heads", "2", "--mlp-dim", "64", "--dtype",
         "bfloat16", "--augment"],
        {**SEED, "dtype": "bfloat16", "augment": True}, {**TINY_VIT, "dtype": "bfloat16"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_each_recipe_and_its_flags_resolve_to_the_pinned_values(name):
    argv, hyper, vit = CASES[name]
    cfg = parse(Config, argv)
    assert dataclasses.asdict(cfg.hyper()) == hyper
    assert dataclasses.asdict(cfg.vit()) == {**vit, "layout": "auto"}  # the backend decides
    ds = ImageDataset(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4, dtype=np.int32) % 2,
                      ("a", "b"), "fake")  # fmt: skip
    as_json = {**hyper, "arch": [list(kv) for kv in hyper["arch"]]}  # tuples come back as lists
    # no vit_layout: the same function on any backend, so a run resumes on another one
    assert cfg.recorded(ds) == {
        "recipe": cfg.recipe, "model": cfg.model, **as_json,
        **{f"vit_{k}": v for k, v in vit.items()},
        "data": "synthetic", "data_source": "fake", "n_train": 4, "classes": ["a", "b"],
        "n_val": 5000, "train_limit": None, "seed": 0, "synthetic_size": 12000,
    }  # fmt: skip


def test_each_preset_spells_out_every_value_and_help_says_each_recipes(capsys):
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(Hyper))  # none hidden
    with pytest.raises(SystemExit):
        parse(Config, ["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    recipes = {name: CASES[name][1:] for name in ("seed", "strong", "cpu")}
    for flag in ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
                 "label_smoothing", "augment", "dtype", "mix"):  # fmt: skip
        assert ", ".join(f"{r} {h[flag]}" for r, (h, _) in recipes.items()) in text, flag
    for flag in ("dim", "depth", "heads", "mlp_dim", "attn_dropout", "patch_size", "dropout"):
        assert ", ".join(f"{r} {v[flag]}" for r, (_, v) in recipes.items()) in text, flag
