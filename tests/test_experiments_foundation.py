"""Smoke runs of the four foundation experiments: tour() (which runs main on a short config).

Every number is checked against its hand-derived value, not against a recorded run.
"""

import numpy as np
import pytest

from experiments import optimizer_step, per_term_grads, scalar_derivative, vjp
from jaxgrad.report.cli import parse

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"

MODULES = (scalar_derivative, vjp, optimizer_step, per_term_grads)


def _recording(main, seen: list):
    """``main`` that also appends its result dict to ``seen``."""

    def wrapped(cfg):
        seen.append(main(cfg))
        return seen[-1]

    return wrapped


@pytest.fixture(scope="module")
def runs():
    """Each experiment's tour() once, recording the dict its main(Config.tiny()) returned."""
    out = {}
    for m in MODULES:
        seen: list[dict] = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(m, "main", _recording(m.main, seen))
            rows = m.tour()
        assert len(seen) == 1, f"{m.__name__}.tour() should run main() once"
        out[m.__name__.split(".")[-1]] = (seen[0], rows)
    return out


@pytest.fixture(scope="module")
def results(runs):
    """main() of each experiment as its tour() ran it (tiny or the seed's own size)."""
    return {name: r for name, (r, _) in runs.items()}


def test_scalar_derivative_numbers_are_hand_derived(results):
    r = results["scalar_derivative"]
    x = scalar_derivative.Config.tiny().x
    assert r["grad"] == pytest.approx(6 * x + 2)  # f'(x) = 6x + 2
    n = scalar_derivative.Config.tiny().repeats
    expected = [(k + 1) * (6 * x + 2) for k in range(n)]  # .grad after k+1 backward calls
    assert r["acc_functional"] == pytest.approx(expected)
    assert r["acc_refs"] == pytest.approx(expected)
    assert r["acc_pure"] == pytest.approx([6 * x + 2] * n)
    assert r["acc_zeroed"] == 0.0
    assert r["half_detached"] == pytest.approx(x)  # d/dx [x * detach(x)] = x
    assert r["fully_detached"] == 0.0


def test_scalar_derivative_freezes_backbone_and_trains_head(results):
    r = results["scalar_derivative"]
    assert r["backbone_identical"] is True
    assert r["head_changed"] is True
    assert r["backbone_state_arrays"] == 0  # no Adam moments for frozen leaves
    assert r["loss_last"] < r["loss_first"]


@pytest.mark.parametrize("x, repeats", [(-1.0, 2), (3.0, 4)])
def test_scalar_derivative_flags_change_the_numbers(x, repeats):
    acc = scalar_derivative.accumulated_grads(np.float32(x), repeats)
    assert acc["functional"] == pytest.approx([(k + 1) * (6 * x + 2) for k in range(repeats)])
    assert acc["refs"] == acc["functional"]


def test_vjp_numbers_are_hand_derived(results):
    r = results["vjp"]
    assert r["scalar"] == {"z": 3.0, "x_grad": 2.0, "y_grad": 1.0}  # z = x² + y at (1, 2)
    x = np.array([[2.0, 1.0]])
    y = np.array([[1.0, 2.0], [3.0, 4.0]])
    ct = np.array([vjp.Config.tiny().cotangent])
    np.testing.assert_allclose(r["z"], x @ y)
    np.testing.assert_allclose(r["x_grad"], ct @ y.T)  # [[1, 3]] for ct [[1, 0]]
    np.testing.assert_allclose(r["y_grad"], x.T @ ct)  # [[2, 0], [1, 0]]
    np.testing.assert_allclose(r["ones_grad"], [1.0, 1.0])
    assert "only for scalar outputs" in r["scalar_error"]
    assert "not have been used" in r["unused_error"]


def test_vjp_cotangent_flag():
    cfg = parse(vjp.Config, ["--cotangent", "0", "1"])
    r = vjp.main(cfg)
    np.testing.assert_allclose(r["x_grad"], [[2.0, 4.0]])  # ct @ yᵀ = second row of yᵀ
    np.testing.assert_allclose(r["y_grad"], [[0.0, 2.0], [0.0, 1.0]])


def test_optimizer_step_numbers_are_hand_derived(results):
    r = results["optimizer_step"]
    cfg = optimizer_step.Config.tiny()
    np.testing.assert_allclose(r["x_grad"], [100.0, 100.0])
    np.testing.assert_allclose(r["x_new"], [1 - 100 * cfg.lr, 2 - 100 * cfg.lr], rtol=1e-6)
    # z = 3x² + y³ at (1, 2): dz/dx = 6x = 6, dz/dy = 3y² = 12; SGD lr2 -> 1 - 6 lr2, 2 - 12 lr2.
    np.testing.assert_allclose(np.ravel(r["grads"]["x"]), [6.0])
    np.testing.assert_allclose(np.ravel(r["grads"]["y"]), [12.0])
    for k in ("after", "train_step"):
        np.testing.assert_allclose(np.ravel(r[k]["x"]), [1 - 6 * cfg.lr2], rtol=1e-6)
        np.testing.assert_allclose(np.ravel(r[k]["y"]), [2 - 12 * cfg.lr2], rtol=1e-6)


def test_per_term_grads_numbers_are_hand_derived(results):
    r = results["per_term_grads"]
    x = np.asarray(r["x"])
    assert x.shape == (1, per_term_grads.Config().size)  # tour() runs the seed's [1, 10]
    np.testing.assert_allclose(r["one_pass"]["A"], 2 * x, rtol=1e-6)  # d sum(x²)/dx = 2x
    np.testing.assert_allclose(r["one_pass"]["B"], np.full_like(x, 1 / x.size), rtol=1e-6)
    for other in ("jacrev", "separate"):
        for term in ("A", "B"):
            np.testing.assert_allclose(r[other][term], r["one_pass"][term], rtol=1e-6)
    assert r["agree"] is True


@pytest.mark.parametrize("name", [m.__name__.split(".")[-1] for m in MODULES])
def test_tour_rows_all_match(runs, name):
    _, rows = runs[name]
    assert rows, "tour() must return at least one Row"
    assert [r.scenario for r in rows if not r.match] == []


@pytest.mark.parametrize(
    "module, argv, message",
    [
        (scalar_derivative, ["--steps", "0"], "--steps must be > 0"),
        (scalar_derivative, ["--weight-decay", "-1"], "--weight-decay must be >= 0"),
        (vjp, ["--cotangent", "1"], "--cotangent needs 2 numbers"),
        (optimizer_step, ["--lr", "-0.1"], "--lr must be > 0"),
        (per_term_grads, ["--size", "0"], "--size must be > 0"),
    ],
)
def test_bad_flags_are_usage_errors(module, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(module.Config, argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
