"""The shared train-step factory (closed-form steps, scan == K steps bit for bit) and cli.parse."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgrad.report.cli import CheckedConfig, option, parse, to_dict
from jaxgrad.training.step import init_train_state, make_eval_step, make_multi_step, make_train_step

F32 = jnp.float32


def seed004_loss(params, batch, key):
    """z = 3x² + y³ on shape-(1,) tensors, reduced with [0]: grads 6 and 12 at (1, 2)."""
    del batch, key
    return (3 * params["x"] ** 2 + params["y"] ** 3)[0], {"z": params["x"][0]}


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_train_step_sgd_matches_hand_derived(jit):
    params = {"x": jnp.array([1.0], F32), "y": jnp.array([2.0], F32)}
    opt = optax.sgd(0.1)
    step = make_train_step(seed004_loss, opt, jit=jit)
    state, metrics = step(init_train_state(params, opt), None, jax.random.key(0))
    # x - lr·6x, y - lr·3y², computed in float32 exactly as PyTorch does (0.39999998, 0.79999995)
    np.testing.assert_array_equal(state.params["x"], F32(1.0) - F32(0.1) * F32(6.0))
    np.testing.assert_array_equal(state.params["y"], F32(2.0) - F32(0.1) * F32(12.0))
    assert float(metrics["loss"]) == 11.0
    assert float(metrics["z"]) == 1.0  # aux entries are merged into the metrics
    np.testing.assert_allclose(float(metrics["grad_norm"]), np.hypot(6.0, 12.0), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["update_norm"]), 0.1 * np.hypot(6.0, 12.0), rtol=1e-6)
    assert int(state.step) == 1


def test_post_update_projects_after_the_update():
    opt = optax.sgd(0.1)
    step = make_train_step(
        seed004_loss, opt, post_update=lambda p: {**p, "y": jnp.clip(p["y"], 1.0, 5.0)}
    )
    params = {"x": jnp.array([1.0], F32), "y": jnp.array([2.0], F32)}
    state, _ = step(init_train_state(params, opt), None, jax.random.key(0))
    np.testing.assert_array_equal(state.params["y"], [1.0])  # 0.8 clipped up to 1.0


def noisy_regression_loss(params, batch, key):
    """MSE plus a key-dependent term, so a wrong per-step key would change the result."""
    x, y = batch
    noise = jax.random.normal(key, y.shape, F32)
    pred = x @ params["w"] + params["b"]
    return jnp.mean((pred - y + 0.1 * noise) ** 2), {}


def test_multi_step_equals_k_single_steps_bit_for_bit():
    k, b, d = 4, 8, 3
    kx, ky = jax.random.split(jax.random.key(1))
    # host arrays: slicing them per step costs no eager dispatch
    batches = (
        np.asarray(jax.random.normal(kx, (k, b, d), F32)),
        np.asarray(jax.random.normal(ky, (k, b), F32)),
    )
    params = {"w": jnp.zeros(d, F32), "b": jnp.zeros((), F32)}
    opt = optax.sgd(0.05, momentum=0.9)
    key = jax.random.key(7)

    single = make_train_step(noisy_regression_loss, opt, donate=False)
    state, losses = init_train_state(params, opt), []
    for i in range(k):
        state, m = single(state, jax.tree.map(lambda a, i=i: a[i], batches), key)
        losses.append(m["loss"])
    multi = make_multi_step(noisy_regression_loss, opt, donate=False)
    mstate, mm = multi(init_train_state(params, opt), batches, key)

    assert mm["loss"].shape == (k,)
    np.testing.assert_array_equal(mm["loss"], jnp.stack(losses))
    for a, c in zip(jax.tree.leaves(state), jax.tree.leaves(mstate)):
        np.testing.assert_array_equal(a, c)
    assert int(mstate.step) == k


def test_eval_step_is_the_loss_without_gradient():
    params = {"x": jnp.array([1.0], F32), "y": jnp.array([2.0], F32)}
    loss, aux = make_eval_step(seed004_loss)(params, None, jax.random.key(0))
    assert float(loss) == 11.0 and float(aux["z"]) == 1.0


# ---- cli.parse ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    steps: int = option(10, "training steps", gt=0)
    lr: float = option(1e-3, "learning rate", gt=0)
    recipe: str = option("seed", "recipe", choices=("seed", "strong"))
    bf16: bool = option(False, "use bfloat16")
    dims: tuple[int, ...] = option((4, 8), "hidden sizes")
    clip: float | None = option(None, "gradient clip norm")

    @classmethod
    def tiny(cls) -> Config:
        return cls(steps=2, dims=(2,))


def test_parse_defaults_and_flags():
    assert parse(Config, []) == Config()
    cfg = parse(
        Config,
        [
            "--steps",
            "5",
            "--lr",
            "0.5",
            "--recipe",
            "strong",
            "--bf16",
            "--dims",
            "1",
            "2",
            "3",
            "--clip",
            "1.0",
        ],
    )
    assert cfg == Config(steps=5, lr=0.5, recipe="strong", bf16=True, dims=(1, 2, 3), clip=1.0)
    assert parse(Config, ["--no-bf16"]).bf16 is False
    assert parse(Config, ["--clip", "none"]).clip is None
    assert to_dict(cfg)["dims"] == (1, 2, 3)


def test_parse_tiny_then_overrides():
    assert parse(Config, ["--tiny"]) == Config.tiny()
    assert parse(Config, ["--tiny", "--steps", "3"]) == Config(steps=3, dims=(2,))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "abc"], "invalid int value"),
        (["--recipe", "fast"], "invalid choice"),
        (["--steps", "0"], "--steps must be > 0, got 0"),
        (["--nope"], "unrecognized arguments"),
    ],
)
def test_parse_bad_value_exits_2_with_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse(Config, argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_option_rejects_mutable_default():
    with pytest.raises(TypeError, match="use a tuple"):
        option([1, 2], "bad")


def test_help_keeps_description_lines_and_shows_every_default_and_choice(capsys):
    @dataclasses.dataclass(frozen=True)
    class HelpConfig:
        lr: float = option(1e-3, "Adam learning rate")
        recipe: str = option("seed", "training recipe", choices=("seed", "strong"))
        seeds: tuple[int, ...] = option((0, 1), "seeds")
        limit: int | None = option(None, "train on N images only")
        progress: bool = option(True, "show progress")
        out_dir: str = option("", "where outputs go ('' = none), 5% of disk")

    description = "Title.\n\n    print(t.grad)   # tensor(14.)\n    for i in range(3): ..."
    with pytest.raises(SystemExit):
        parse(HelpConfig, ["--help"], description=description)
    text = capsys.readouterr().out
    assert "    print(t.grad)   # tensor(14.)\n    for i in range(3): ..." in text
    flat = " ".join(text.split())  # argparse wraps option help at the terminal width
    for expected in (
        "--lr FLOAT Adam learning rate (default: 0.001)",
        "--recipe STR training recipe [choices: seed, strong] (default: seed)",
        "--seeds [INT ...] seeds (default: 0 1)",
        "--limit INT train on N images only (default: none; 'none' to unset)",
        "show progress (default: True)",
        "where outputs go ('' = none), 5% of disk (default: '')",
    ):
        assert expected in flat, expected
