"""``compare_layers``: a torch module and its NNX port run side by side, layer by layer
(see :mod:`jaxgrad.port`). torch is imported inside the functions that take torch modules."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from jaxgrad.autodiff.freeze import path_str
from jaxgrad.port.rules import (
    Rule,
    param_paths,
    part_rows,
    rule_targets,
    to_nnx_parts,
    to_numpy,
)
from jaxgrad.report.tables import render_table

__all__ = ["LayerReport", "compare_layers"]


class LayerReport(NamedTuple):
    """What :func:`compare_layers` found. ``rows``: (layer, nnx path, shape, max abs, max rel,
    ok) in torch execution order; ``first_bad``: the first layer past tolerance or None;
    ``grad_rows`` / ``first_bad_param``: the same per parameter (empty / None without a loss);
    ``table``: the printed text."""

    rows: list
    first_bad: str | None
    grad_rows: list
    first_bad_param: str | None
    table: str


def _first_tensor(out):
    if hasattr(out, "to_tuple"):  # transformers' ModelOutput
        out = out.to_tuple()
    if isinstance(out, tuple | list):
        return _first_tensor(out[0]) if out else None
    return out


def _module_pairs(torch_module, nnx_module, rules: Sequence[Rule]) -> dict[str, str]:
    """torch submodule name → NNX submodule path, where the rules map the torch module's
    parameters onto exactly the parameters of one NNX submodule."""
    nnx_params = param_paths(nnx_module)
    nnx_mods: dict[str, set] = {}
    for path, _ in nnx.iter_graph(nnx_module):
        if isinstance(_, nnx.Module):
            name = path_str(path, ".", root="")
            prefix = f"{name}." if name else ""
            nnx_mods[name] = {p for p in nnx_params if p.startswith(prefix)}
    # deepest torch module first takes the deepest NNX module holding the same params, so a
    # one-layer encoder pairs encoder.layers.0 with layers.0 and encoder with encoder
    pairs, taken = {}, set()
    named = sorted(torch_module.named_modules(), key=lambda m: -len(m[0].split(".")) if m[0] else 0)
    for tname, tmod in named:
        keys = [f"{tname}.{k}" if tname else k for k, _ in tmod.named_parameters()]
        if not keys:
            continue
        found = [rule_targets(rules, k) for k in keys]
        if any(rule is None for rule, _ in found):
            continue
        mapped = {p for _, paths in found for p in paths}  # a fused key maps to several
        cands = [n for n, params in nnx_mods.items() if params == mapped and n not in taken]
        if cands:
            best = max(cands, key=lambda n: len(n.split(".")) if n else 0)
            pairs[tname] = best
            taken.add(best)
    return pairs


@contextlib.contextmanager
def _capture_nnx(nnx_module, paths: Iterable[str], store: dict):
    """Record the output of every NNX submodule at ``paths`` while the block runs."""
    wanted = {}
    for path, node in nnx.iter_graph(nnx_module):
        name = path_str(path, ".", root="")
        if name in paths and isinstance(node, nnx.Module):
            wanted[id(node)] = name
    classes = {type(n) for _, n in nnx.iter_graph(nnx_module) if id(n) in wanted}
    originals = {}

    def wrap(cls, orig):
        def call(self, *a, **k):
            out = orig(self, *a, **k)
            if id(self) in wanted:
                store[wanted[id(self)]] = np.asarray(_first_tensor(out))
            return out

        return call

    try:
        for cls in classes:
            originals[cls] = cls.__dict__.get("__call__")
            cls.__call__ = wrap(cls, cls.__call__)
        yield
    finally:
        for cls, orig in originals.items():
            if orig is None:
                del cls.__call__
            else:
                cls.__call__ = orig


def _errors(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a - b)
    scale = np.maximum(np.abs(b), 1e-6)
    return float(diff.max(initial=0.0)), float((diff / scale).max(initial=0.0))


def _align(t: np.ndarray, j: np.ndarray) -> np.ndarray | None:
    """torch output laid out like the NNX one (channels-first maps → channels-last)."""
    if t.shape == j.shape:
        return t
    if t.ndim == 4 and np.moveaxis(t, 1, -1).shape == j.shape:
        return np.moveaxis(t, 1, -1)
    return None


def compare_layers(
    torch_module,
    nnx_module: nnx.Module,
    inputs: Sequence[np.ndarray],
    *,
    rules: Sequence[Rule],
    nnx_inputs: Sequence[np.ndarray] | None = None,
    torch_loss: Callable | None = None,
    nnx_loss: Callable | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    grad_atol: float = 1e-4,
    grad_rtol: float = 1e-3,
    print_table: bool = True,
) -> LayerReport:
    """Run both models on ``inputs`` and compare every paired submodule's output, in order.

    Pairs come from ``rules``: a torch submodule is paired with the NNX submodule that holds
    exactly the params its own params map to (leaves and blocks alike). A layer passes when
    ``|nnx - torch| <= atol + rtol * |torch|`` everywhere. With ``torch_loss(output) -> scalar``
    and ``nnx_loss(output) -> scalar`` the gradient of each parameter is compared too (torch's
    ``.grad`` mapped through ``rules``, against ``jax.grad`` on the NNX params).

    Args:
      inputs: positional inputs for the torch module (numpy; converted to tensors).
      nnx_inputs: for the NNX module when its layout differs (e.g. NHWC); default ``inputs``.
    """
    import torch

    pairs = _module_pairs(torch_module, nnx_module, rules)
    t_out: dict[str, np.ndarray] = {}
    order: list[str] = []
    hooks = []

    def hook(name):
        def fn(mod, args, out):
            out = _first_tensor(out)
            if isinstance(out, torch.Tensor):
                t_out[name] = out.detach().cpu().float().numpy()
                order.append(name)

        return fn

    for name, mod in torch_module.named_modules():
        if name in pairs:
            hooks.append(mod.register_forward_hook(hook(name)))
    t_inputs = [torch.from_numpy(np.asarray(x)) for x in inputs]
    try:
        with torch.no_grad():
            torch_module(*t_inputs)
    finally:
        for h in hooks:
            h.remove()

    j_out: dict[str, np.ndarray] = {}
    j_inputs = [jax.numpy.asarray(x) for x in (nnx_inputs if nnx_inputs is not None else inputs)]
    with _capture_nnx(nnx_module, set(pairs.values()), j_out):
        nnx_module(*j_inputs)

    rows, first_bad = [], None
    for name in order:
        path = pairs[name]
        j, t = j_out.get(path), t_out[name]
        if j is None:
            rows.append((name, path, str(t.shape), "-", "-", "not called"))
            continue
        ta = _align(t, j)
        if ta is None:
            rows.append((name, path, f"{t.shape} vs {j.shape}", "-", "-", "SHAPE"))
            first_bad = first_bad or name
            continue
        abs_err, rel_err = _errors(j, ta)
        ok = bool(np.all(np.abs(j - ta) <= atol + rtol * np.abs(ta)))
        label = name or f"({type(torch_module).__name__})"
        rows.append(
            (label, path or "(root)", str(tuple(j.shape)), f"{abs_err:.2e}", f"{rel_err:.2e}", ok)
        )
        if not ok and first_bad is None:
            first_bad = label
    text = render_table(
        [(*r[:5], "ok" if r[5] is True else ("FAIL" if r[5] is False else r[5])) for r in rows],
        ["torch layer", "nnx path", "shape", "max abs", "max rel", ""],
        title=f"layer by layer (atol {atol:g}, rtol {rtol:g})",
        right=["max abs", "max rel"],
    )
    text += "\n" + (
        f"first layer past tolerance: {first_bad}" if first_bad else "every layer within tolerance"
    )

    grad_rows, first_bad_param = [], None
    if torch_loss is not None and nnx_loss is not None:
        grad_rows, first_bad_param, gtext = _compare_grads(
            torch_module, nnx_module, t_inputs, j_inputs, rules, torch_loss, nnx_loss,
            grad_atol, grad_rtol,
        )  # fmt: skip
        text += "\n" + gtext
    if print_table:
        print(text, flush=True)
    return LayerReport(rows, first_bad, grad_rows, first_bad_param, text)


def _compare_grads(torch_module, nnx_module, t_inputs, j_inputs, rules, t_loss, j_loss, at, rt):
    torch_module.zero_grad(set_to_none=True)
    t_loss(torch_module(*t_inputs)).backward()
    t_grads = {k: p.grad for k, p in torch_module.named_parameters() if p.grad is not None}
    want = param_paths(nnx_module)
    graphdef, params, rest = nnx.split(nnx_module, nnx.Param, ...)

    def loss(p):
        return j_loss(nnx.merge(graphdef, p, rest)(*j_inputs))

    j_vals = {
        path_str(p, ".", root=""): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(jax.grad(loss)(params)))[
            0
        ]
    }
    rows, first_bad = [], None
    for key, g in t_grads.items():
        rule, paths = rule_targets(rules, key)
        if rule is None or any(p not in want for p in paths):
            continue
        targets = [tuple(want[p].shape) for p in paths]
        parts = to_nnx_parts(rule, to_numpy(g).astype(np.float32), targets)
        if parts is None:
            continue
        # a fused tensor gets one row per part, named by its rows: in_proj_weight[0:E] is q
        ends = np.cumsum(part_rows(rule, targets)) if len(paths) > 1 else None
        for i, (path, tg) in enumerate(zip(paths, parts)):
            label = key if ends is None else f"{key}[{ends[i - 1] if i else 0}:{ends[i]}]"
            jg = j_vals[path]
            abs_err, rel_err = _errors(jg, tg)
            ok = bool(np.all(np.abs(jg - tg) <= at + rt * np.abs(tg)))
            rows.append((label, path, f"{abs_err:.2e}", f"{rel_err:.2e}", ok))
            if not ok and first_bad is None:
                first_bad = label
    text = render_table(
        [(*r[:4], "ok" if r[4] else "FAIL") for r in rows],
        ["torch param", "nnx path", "max abs", "max rel", ""],
        title=f"loss gradient per parameter (atol {at:g}, rtol {rt:g})",
        right=["max abs", "max rel"],
    )
    text += "\n" + (
        f"first parameter past tolerance: {first_bad}"
        if first_bad
        else "every parameter gradient within tolerance"
    )
    return rows, first_bad, text
