"""The gradient-flow doctor on five purpose-built bugs: "my parameters don't update — why?"

Run: ``python -m experiments.doctor_demo [--tiny] [--steps 200] [--out-dir runs/doctor_demo]``

The PyTorch it answers (seed 000)::

    text_features = my_text_encoder(inputs["input_ids"])           # computed, but...
    logits = image_features @ image_features.T                      # ...not in the loss
    image_features = clip_model.get_image_features(pixels).detach()  # blocks the image tower
    for param_group in optimizer.param_groups: print(param_group["params"])
    for n, p in model.named_parameters(): print(n, p.grad)          # None? zeros? nan?

Five cases, each on a small two-tower or MLP model (flax NNX, params from ``nnx.split``):

1. disconnected encoder — the text tower's output never reaches the loss → ``unused``;
2. detached branch — ``stop_gradient`` on the image features → image tower ``blocked``;
3. frozen tower — ``optimizer_with_frozen`` → connected, but the optimizer says ``frozen``;
4. dead ReLU layer — a hidden bias of −10 kills every unit → ``zero`` behind it;
5. a NaN — an (unsquared) L2-norm penalty on a zero-initialised gate: d‖w‖/dw = 0/0.

``main`` then trains the disconnected model for ``--steps`` with per-module gradient norms
inside the jitted step (:mod:`jaxgrad.inspect.gradnorms`): the text tower's norm is 0 from the start
(a vanishing alert) and ``grad_norms.png`` plots every module over steps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments._support.common import Row
from jaxgrad.autodiff.freeze import frozen_mask, optimizer_with_frozen, path_str
from jaxgrad.inspect.doctor import FlowReport, diagnose
from jaxgrad.inspect.gradnorms import GradNormMonitor, make_grad_norm_metrics
from jaxgrad.report.cli import CheckedConfig, option, run_main
from jaxgrad.report.io import atomic_write_json
from jaxgrad.training.loop import init_params
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state, make_multi_step
from jaxgrad.training.xla import RUN_ONCE


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    seed: int = option(0, "seed of the models and the synthetic paired data")
    batch_size: int = option(16, "pairs per batch (the contrastive loss is B x B)", gt=0)
    width: int = option(32, "hidden width of every tower", gt=0)
    depth: int = option(4, "hidden layers per tower (numbered blocks fold in the printout)", gt=0)
    steps: int = option(200, "training steps of the gradient-norm watch (0: skip it)", ge=0)
    lr: float = option(1e-3, "Adam learning rate of the gradient-norm watch", gt=0)
    steps_per_dispatch: int = option(50, "watch steps scanned per device dispatch", gt=0)
    out_dir: str = option("runs/doctor_demo", "where report.json and grad_norms.png go")

    @classmethod
    def tiny(cls) -> Config:
        return cls(batch_size=8, width=8, depth=2, steps=20)


class Tower(nnx.Module):
    """``[B, D_in]`` → ``[B, W]``: input layer, ``depth`` tanh blocks, projection."""

    def __init__(self, d_in: int, width: int, depth: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Linear(d_in, width, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])
        self.proj = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.tanh(self.embed(x))
        for block in self.blocks:
            h = h + jnp.tanh(block(h))  # residual, so a healthy tower passes gradient
        return self.proj(h)


class TwoTower(nnx.Module):
    """Seed 000's set-up: an image tower and a custom text tower into one space."""

    def __init__(self, d_img: int, d_txt: int, width: int, depth: int, *, rngs: nnx.Rngs):
        self.image = Tower(d_img, width, depth, rngs=rngs)
        self.text = Tower(d_txt, width, depth, rngs=rngs)


class GatedMLP(nnx.Module):
    """A classifier MLP ``[B, D]`` → ``[B, C]`` with ReLUs and a multiplicative gate."""

    def __init__(self, d_in: int, width: int, classes: int, *, rngs: nnx.Rngs):
        self.layer1 = nnx.Linear(d_in, width, rngs=rngs)
        self.layer2 = nnx.Linear(width, width, rngs=rngs)
        self.gate = nnx.Param(jnp.zeros((width,)))  # zero init: the NaN case's culprit
        self.head = nnx.Linear(width, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.layer1(x))
        h = jax.nn.relu(self.layer2(h)) * (1 + self.gate[...])
        return self.head(h)


def contrastive(img: jax.Array, txt: jax.Array) -> jax.Array:
    """Seed 000's loss: CE over ``img @ txtᵀ`` with the diagonal as labels (``[B, W]`` each)."""
    logits = img @ txt.T
    labels = jnp.arange(logits.shape[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def paired_batch(seed: int, cfg: Config) -> dict:
    """Synthetic pairs: text features are a fixed linear map of the image features plus noise.

    Host-side numpy: the data needs no compiled program. ``img [B, 12]``, ``txt [B, 10]``,
    ``y [B]`` (3 classes, for the MLP cases).
    """
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((cfg.batch_size, 12), dtype=np.float32)
    mix = rng.standard_normal((12, 10), dtype=np.float32)
    txt = img @ mix + 0.1 * rng.standard_normal((cfg.batch_size, 10), dtype=np.float32)
    y = rng.integers(0, 3, cfg.batch_size).astype(np.int32)
    return {"img": jnp.asarray(img), "txt": jnp.asarray(txt), "y": jnp.asarray(y)}


def two_tower_loss(graphdef: nnx.GraphDef, mode: str) -> Callable:
    """``loss_fn(params, batch, key) -> (loss, aux)`` for the two-tower cases.

    mode ``"ok"``: the seed's correct loss; ``"disconnected"``: text features computed but the
    logits use ``img @ imgᵀ``; ``"detached"``: ``stop_gradient`` on the image features.
    """

    def loss_fn(params, batch, key):
        del key
        model = nnx.merge(graphdef, params)
        img, txt = model.image(batch["img"]), model.text(batch["txt"])
        if mode == "disconnected":
            return contrastive(img, img), {"text_feature_norm": jnp.linalg.norm(txt)}
        if mode == "detached":
            img = jax.lax.stop_gradient(img)  # .detach()
        return contrastive(img, txt), {}

    return loss_fn


def mlp_loss(graphdef: nnx.GraphDef, norm_penalty: float) -> Callable:
    """Cross entropy of :class:`GatedMLP`, plus ``norm_penalty * ‖gate‖₂`` (unsquared)."""

    def loss_fn(params, batch, key):
        del key
        model = nnx.merge(graphdef, params)
        logits = model(batch["img"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        if not norm_penalty:  # 0 * nan is nan: leave the penalty out entirely
            return ce, {"ce": ce}
        return ce + norm_penalty * jnp.linalg.norm(model.gate[...]), {"ce": ce}

    return loss_fn


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    pytorch: str  # what a PyTorch user sees
    expect: dict  # path prefix → the status every leaf under it must have
    loss_fn: Callable
    params: nnx.State
    optimizer: optax.GradientTransformation | None = None


def _models(size: tuple[int, int], *, rngs: nnx.Rngs) -> tuple[TwoTower, GatedMLP]:
    """Both models of the cases, ``size = (width, depth)``, for one jitted ``init_params``."""
    width, depth = size
    return TwoTower(12, 10, width, depth, rngs=rngs), GatedMLP(12, width, 3, rngs=rngs)


def create(cfg: Config, key: jax.Array) -> tuple[TwoTower, GatedMLP]:
    """The two models, initialised in one program compiled at XLA opt level 0 (it runs once,
    so compiling dominates: 1.5 s instead of 3.7 s of CPU)."""
    return nnx.merge(*init_params(_models, (cfg.width, cfg.depth), key, compiler_options=RUN_ONCE))


def build_cases(cfg: Config) -> list[Case]:
    keys = named_keys(cfg.seed, "init")
    two, mlp = create(cfg, keys["init"])
    g2, p2 = nnx.split(two, nnx.Param)
    gn, pn = nnx.split(mlp, nnx.Param)
    # The same MLP with every unit of layer2 dead: its bias pushed to -10.
    pm = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.full_like(x, -10.0) if path_str(p) == "layer2/bias" else x, pn
    )
    frozen = optimizer_with_frozen(optax.adam(cfg.lr), frozen_mask(p2, ["image"]))
    return [
        Case("disconnected encoder", "text tower .grad is None",
             {"image": "connected", "text": "unused"}, two_tower_loss(g2, "disconnected"), p2),
        Case("detached branch", "image tower .grad is None (.detach())",
             {"image": "blocked", "text": "connected"}, two_tower_loss(g2, "detached"), p2),
        Case("frozen tower", "image tower not in param_groups",
             {"image": "connected", "text": "connected"}, two_tower_loss(g2, "ok"), p2, frozen),
        Case("dead ReLU layer", "layer1/layer2 .grad all zeros",
             {"layer1": "zero", "layer2": "zero", "head/kernel": "zero", "head/bias": "connected"},
             mlp_loss(gn, 0.0), pm),
        Case("NaN", "gate.grad is nan", {"gate": "non-finite", "head": "connected"},
             mlp_loss(gn, 1e-3), pn),
    ]  # fmt: skip


def check(case: Case, report: FlowReport) -> bool:
    """Every leaf under each expected prefix has the expected status (and frozen means frozen)."""
    status = report.status()
    for prefix, want in case.expect.items():
        under = [s for p, s in status.items() if p == prefix or p.startswith(prefix + "/")]
        if not under or any(s != want for s in under):
            return False
    if case.optimizer is not None:
        frozen = {leaf.path for leaf in report.leaves if leaf.update == "frozen"}
        return frozen == {p for p in status if p.startswith("image/")}
    return True


def run_cases(
    cfg: Config, *, show: bool = True, only: tuple[str, ...] | None = None
) -> list[tuple[Case, FlowReport]]:
    """Diagnose every case (or the ones named in ``only``); returns ``(case, report)`` pairs."""
    batch = paired_batch(cfg.seed, cfg)
    out = []
    for case in build_cases(cfg):
        if only is not None and case.name not in only:
            continue
        if show:
            print(f"\n### {case.name}  (PyTorch: {case.pytorch})")
        report = diagnose(case.loss_fn, case.params, batch, jax.random.key(0), case.optimizer,
                          show=show)  # fmt: skip
        out.append((case, report))
    return out


def watch_grad_norms(cfg: Config, out_dir: Path) -> dict:
    """Train the disconnected two-tower model with per-module gradient norms in the step."""
    keys = named_keys(cfg.seed, "init", "step")
    graphdef, params = nnx.split(create(cfg, keys["init"])[0])
    opt = optax.adam(cfg.lr)
    extra = make_grad_norm_metrics(params, depth=2)  # image/embed, image/blocks, text/...
    # the same make_train_step body, K steps scanned per dispatch (make_multi_step)
    steps = make_multi_step(two_tower_loss(graphdef, "disconnected"), opt, extra_metrics=extra)
    state = init_train_state(params, opt)
    monitor = GradNormMonitor(warn=False)
    t0 = time.perf_counter()
    for start in range(0, cfg.steps, cfg.steps_per_dispatch):
        k = min(cfg.steps_per_dispatch, cfg.steps - start)
        # host-side numpy batches (one seed per step), stacked [K, ...] for the scan
        batches = [paired_batch(cfg.seed * 100_003 + i, cfg) for i in range(start, start + k)]
        state, metrics = steps(state, jax.tree.map(lambda *b: jnp.stack(b), *batches), keys["step"])
        for alert in monitor.record(start, jax.device_get(metrics)):
            print("  ALERT", alert)
    png = monitor.plot(
        out_dir / "grad_norms.png",
        title="doctor demo, disconnected text tower: gradient norm per module",
    )
    last = {m: v[-1] for m, (_, v) in monitor.history.items()}
    print(f"  {cfg.steps} steps in {time.perf_counter() - t0:.1f} s; wrote {png}")
    return {"final_loss": float(metrics["loss"][-1]), "last_norms": last, "alerts": monitor.alerts}


def main(cfg: Config) -> dict:
    out_dir = Path(cfg.out_dir)
    results = run_cases(cfg)
    summary = {case.name: check(case, report) for case, report in results}
    print("\ndiagnosis as expected:", summary)
    atomic_write_json(
        out_dir / "report.json", {case.name: report.to_dict() for case, report in results}
    )
    out = {"cases": summary}
    if cfg.steps:
        print("\n### gradient-norm watch")
        out["watch"] = watch_grad_norms(cfg, out_dir)
    return out


def summary(case: Case, report: FlowReport) -> str:
    """``"image: connected; text: unused"``: the status of the first leaf under each prefix."""
    status = report.status()
    parts = [f"{p}: {next(s for x, s in status.items() if x.startswith(p))}" for p in case.expect]
    if case.optimizer is not None:
        frozen = sorted({x.path.split("/")[0] for x in report.leaves if x.update == "frozen"})
        parts.append(f"optimizer freezes {', '.join(frozen) or 'nothing'}")
    return "; ".join(parts)


def tour() -> list[Row]:
    rows = []
    for case, report in run_cases(Config.tiny(), show=False):
        got = summary(case, report)
        print(f"{case.name:22s} {got}")
        rows.append(Row(f"doctor: {case.name}", case.pytorch, got, check(case, report)))
    return rows


if __name__ == "__main__":
    run_main(main, Config)
