"""The PyTorch twin of ``--recipe cpu`` (experiments.torch_vit_recipe) trains the same model
with the same schedule: parameter count, the per-step learning rate against optax's, and a
one-epoch smoke run."""

import optax
import pytest

from experiments.torch_vit_recipe import Config, lr_factor, main
from jaxgrad.tasks.classifier import RECIPES

pytest.importorskip("torch")


def test_the_schedule_is_optax_warmup_cosine_step_by_step():
    warm, total = 17, 351
    ref = optax.warmup_cosine_decay_schedule(0.0, 1.0, warm, total)
    for t in (0, 1, 8, 16, 17, 18, 100, 200, 350, 351, 400):
        assert lr_factor("cosine", warm, total, t) == pytest.approx(float(ref(t)), abs=1e-6)
    assert lr_factor("constant", warm, total, 5) == 1.0


def test_the_twin_trains_the_recipe_model():
    out = main(Config.tiny())
    assert out["params"] == 557_578  # the cpu recipe's ViT, as jaxgrad's (tests/test_recipes.py)
    (row,) = out["history"]
    assert row["epoch"] == 1 and 0.0 <= row["val_accuracy"] <= 1.0 and row["loss"] > 0
    assert RECIPES["cpu"].vit().patch_size == 8
