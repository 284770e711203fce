"""Zero-shot evaluation of a CLIP-style model (top-1 with one prompt and with the prompt
ensemble, image↔text retrieval recall@1/5) and the printed ``param_groups`` report
(``experiments.clip_contrastive``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgrad.data.captions import TEMPLATES
from jaxgrad.data.classes import match_classes
from jaxgrad.data.dataset import ImageDataset
from jaxgrad.data.pipeline import normalize
from jaxgrad.losses.contrastive import retrieval_metrics
from jaxgrad.models.clip import IMAGE_TOWER, l2_normalize
from jaxgrad.report.plots import plot_run_curves
from jaxgrad.report.tables import print_table
from jaxgrad.training.loop import make_evaluate
from jaxgrad.training.parallel import replicated
from jaxgrad.training.xla import RUN_ONCE

__all__ = ["make_evaluator", "plot_clip_run", "print_param_groups"]


def make_evaluator(
    graphdef, rest, val: ImageDataset, captions, *, seed: int, fast: bool = False,
    chunk: int = 500, images=None, image_input: str = "images", class_names=None, mesh=None,
):  # fmt: skip
    """``evaluate(params) -> metrics``: zero-shot top-1 (1 prompt, ensemble), recall@1/5.

    ``class_names``: the names the caption table's classes were built from (the run's
    recorded names; default ``val.class_names``); ``val``'s classes are matched to them by
    name (:func:`jaxgrad.data.classes.match_classes`), never by position.

    Held-out images (``images``: default ``val.images``; CLIP pixel_values for
    ``image_input="pixels"``; cached tower features for ``"features"``, embedded once) are
    encoded ``chunk`` at a time (``jaxgrad.training.loop.make_evaluate``), then every prompt of every
    class and one fixed caption per image (for retrieval) in one text batch, scored in a
    second jitted program. ``mesh`` (> 1 device): the held-out set is replicated over it, as
    the params of a data-parallel run are (every process evaluates the same, process 0 logs).
    """
    ids, cmask = captions
    t_all, c, length = ids.shape
    if class_names is not None and tuple(class_names) != val.class_names:
        val = match_classes(val, class_names, model="the CLIP run's training set")
    if c != val.num_classes:
        raise ValueError(f"make_evaluator: the caption table has {c} classes, the evaluation "
                         f"set {val.num_classes} ({val.source}); pass class_names=")  # fmt: skip
    n_ret = min(len(val), 1000)  # retrieval over at most 1000 pairs
    t = np.random.default_rng(seed).integers(0, t_all, n_ret)  # the same captions every time
    all_ids = jnp.concatenate([ids.reshape(-1, length), ids[t, val.labels[:n_ret]]])
    all_mask = jnp.concatenate([cmask.reshape(-1, length), cmask[t, val.labels[:n_ret]]])
    opts = RUN_ONCE if fast else None
    model = lambda params: nnx.merge(graphdef, params, rest)
    prep = (lambda x: x) if image_input == "pixels" else normalize
    embed = make_evaluate(
        lambda params, x, _: {"img": model(params).encode_image(prep(x))},
        batch_size=chunk, reduce="stack", compiler_options=opts,
    )  # fmt: skip

    @functools.partial(jax.jit, compiler_options=opts)
    def metrics(params, img, labels):
        txt_all = model(params).encode_text(all_ids, all_mask)
        cls, txt = txt_all[: t_all * c].reshape(t_all, c, -1), txt_all[t_all * c :]
        ens = cls.mean(axis=0)  # prompt ensemble: mean of unit vectors, renormalised
        ens = ens / jnp.linalg.norm(ens, axis=-1, keepdims=True)
        lab = labels[:n_ret]
        return {
            "zeroshot_acc": jnp.mean(jnp.argmax(img @ cls[0].T, axis=1) == labels),
            "zeroshot_ens_acc": jnp.mean(jnp.argmax(img @ ens.T, axis=1) == labels),
            **retrieval_metrics(
                image_features=img[:n_ret], text_features=txt, image_labels=lab, text_labels=lab
            ),
        }

    images, labels = val.images if images is None else images, val.labels
    if mesh is not None and mesh.size > 1:
        images, labels = jax.device_put((np.asarray(images), labels), replicated(mesh))
    else:
        images, labels = jnp.asarray(images), jnp.asarray(labels)
    cached = l2_normalize(images.astype(jnp.float32)) if image_input == "features" else None

    def evaluate(params) -> dict[str, float]:
        img = cached if cached is not None else embed(params, images, labels)["img"]
        return {k: float(v) for k, v in metrics(params, img, labels).items()}

    return evaluate


def print_param_groups(groups: list[dict], *, cached=None) -> list[dict]:
    """Print :func:`jaxgrad.tasks.clip.param_groups` rows (with ``lr=``) as PyTorch's
    ``optimizer.param_groups`` check: per module its params, peak lr and optimizer state.
    ``cached``: a :class:`jaxgrad.tasks.clip_inputs.TowerInputs` of kind ``features``: the frozen
    tower is not in the model (its features come from the cache) and is listed with no state.
    Returns the rows, the cached tower's included."""
    if cached is not None and cached.kind == "features":
        n = cached.tower_params
        groups = [*groups, {"module": IMAGE_TOWER, "leaves": cached.tower_leaves, "params": n,
                            "frozen": n, "state_floats": 0, "lr": None, "cached": True}]  # fmt: skip
    status = lambda g: (
        "FROZEN: features cached, tower not run" if g.get("cached")
        else "FROZEN (not in optimizer)" if g["frozen"] == g["params"] else "trainable"
    )  # fmt: skip
    print_table(
        [(g["module"], g["leaves"], f"{g['params']:,}", "-" if g["lr"] is None else f"{g['lr']:g}",
          f"{g['state_floats']:,}", status(g)) for g in groups],
        ("module", "leaves", "params", "peak lr", "optimizer state", "status"),
        title="what the optimizer updates (PyTorch's optimizer.param_groups)",
        right=("leaves", "params", "peak lr", "optimizer state"),
    )  # fmt: skip
    return groups


def plot_clip_run(path, hist: dict, *, loss: str, title: str, chance: float):
    """Train loss and zero-shot accuracy (1 prompt, the prompt ensemble) in % with the chance
    line, so a frozen run's near-chance curve reads as that (``hist``: ``step``/``loss``,
    ``eval_step``/``zs``/``zs_ens``)."""
    return plot_run_curves(
        path,
        loss={loss: (hist["step"], hist["loss"])},
        accuracy={
            "1 prompt": (hist["eval_step"], hist["zs"]),
            f"{len(TEMPLATES)}-prompt ensemble": (hist["eval_step"], hist["zs_ens"]),
        },
        title=title, xlabel="step", loss_label=f"{loss} contrastive loss (train)",
        accuracy_label="zero-shot val accuracy (%)", chance=chance,
    )  # fmt: skip
