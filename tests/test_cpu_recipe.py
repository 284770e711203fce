"""``--recipe cpu`` of experiments.vit_cifar10: the recipe's own model (patch 8, dim 128, depth 4,
no dropout) replaces the seed's, flags still override it, and the new flags reach the model."""

import dataclasses

from experiments.vit_cifar10 import RECIPES, Config
from jaxgrad.models.vit import ViTConfig
from jaxgrad.report.cli import parse

CPU_MODEL = ViTConfig(patch_size=8, dim=128, depth=4, heads=4, dim_head=32, mlp_dim=256,
                      dropout=0.0, emb_dropout=0.0)  # fmt: skip


def test_cpu_recipe_builds_its_own_model_and_schedule():
    cfg = parse(Config, ["--recipe", "cpu", "--data", "folder", "--data-dir", "x"])
    assert cfg.vit() == CPU_MODEL
    h = cfg.hyper()
    assert (h.epochs, h.batch_size, h.lr, h.schedule, h.augment) == (10, 128, 2e-3, "cosine", True)
    assert h.dtype == "float32" and h.mix == 0.0  # bf16 and mixup did not pay on a CPU


def test_flags_override_the_recipe_model_and_reach_the_vit():
    argv = ["--recipe", "cpu", "--dim", "96", "--no-attn-dropout", "--mix", "0.5"]
    cfg = parse(Config, argv)
    assert cfg.vit() == dataclasses.replace(CPU_MODEL, dim=96, attn_dropout=False)
    assert cfg.hyper().mix == 0.5
    assert Config(recipe="cpu", model="tiny").vit() == ViTConfig.tiny()  # tiny stays tiny
    assert Config().vit() == ViTConfig.seed() and RECIPES["seed"].arch == ()
