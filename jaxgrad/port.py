"""Port a PyTorch model to flax NNX and prove the port equal, layer by layer.

Two pieces, generic over torch and NNX modules:

- :func:`convert` — a torch ``state_dict`` → the NNX params, by declarative :class:`Rule` s
  (a key template → a param path template, plus the layout change). Every unmapped key, every
  unfilled NNX param and every shape mismatch is reported together in one :class:`PortError`:
  never silent, never partial. :func:`export` runs the same rules backwards.
- :func:`compare_layers` — runs both models on the same inputs, captures every submodule's
  output (torch forward hooks; on the NNX side each submodule's ``__call__`` is intercepted),
  prints a table layer by layer (max abs / rel error) in execution order, names the first layer
  past tolerance, then compares the loss gradient parameter by parameter.

Rules, e.g. for a torch ``nn.Linear`` at ``blocks.3.fc`` held by an NNX ``blocks[3].fc``::

    Rule("blocks.{i}.fc.weight", "blocks.{i}.fc.kernel", "linear")  # [out, in] -> [in, out]
    Rule("blocks.{i}.fc.bias", "blocks.{i}.fc.bias")                 # copied

``{name}`` matches one integer (a ``ModuleList`` / ``nnx.List`` index). Layouts (``LAYOUTS``):
``"copy"`` (LayerNorm weight → scale, biases, ``nn.Embedding`` → ``nnx.Embed``), ``"linear"``
(transpose), ``"conv"`` (``[O, I, kh, kw]`` → ``[kh, kw, I, O]``), ``"reshape"`` (same numbers,
other singleton axes: cls tokens). jaxgrad never imports torch at module level: functions that
take torch modules import it inside.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from jaxgrad.tables import render_table

__all__ = [
    "LAYOUTS",
    "LayerReport",
    "PortError",
    "Rule",
    "compare_layers",
    "convert",
    "export",
    "load_state_dict",
    "param_paths",
    "to_numpy",
]


class Rule(NamedTuple):
    """One torch key template → one NNX param path template (dots between parts)."""

    key: str  # e.g. "encoder.layers.{i}.self_attn.q_proj.weight"
    path: str  # e.g. "encoder.layers.{i}.self_attn.q_proj.kernel"
    layout: str = "copy"  # a key of LAYOUTS


def _conv_in(w, shape):
    return np.transpose(w, (2, 3, 1, 0)) if w.ndim == 4 else w


def _conv_out(w, shape):
    return np.transpose(w, (3, 2, 0, 1)) if w.ndim == 4 else w


def _reshape(w, shape):
    return w.reshape(shape) if w.size == int(np.prod(shape)) else w


# layout -> (torch -> nnx, nnx -> torch); each takes (array, target shape)
LAYOUTS: dict[str, tuple[Callable, Callable]] = {
    "copy": (lambda w, s: w, lambda w, s: w),
    "linear": (lambda w, s: w.T, lambda w, s: w.T),
    "conv": (_conv_in, _conv_out),
    "reshape": (_reshape, _reshape),
}


class PortError(ValueError):
    """A state_dict that does not fit the NNX module: every problem, listed at once."""

    def __init__(self, message: str, *, unmapped=(), unfilled=(), mismatched=()):
        super().__init__(message)
        # mismatched: (torch key, its shape, nnx path, the nnx shape expected)
        self.unmapped, self.unfilled = list(unmapped), list(unfilled)
        self.mismatched = list(mismatched)


def to_numpy(v: Any) -> np.ndarray:
    """A torch tensor (without importing torch), jax or numpy array → numpy, same dtype."""
    if hasattr(v, "detach"):
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        v = v.numpy()
    return np.asarray(v)


def _path_str(path: tuple) -> str:
    return ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def param_paths(module_or_state: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """``"a.b.0.kernel" -> ShapeDtypeStruct`` for every ``nnx.Param`` of a module (or a pure
    dict / State of params)."""
    if isinstance(module_or_state, nnx.Module):
        module_or_state = nnx.state(module_or_state, nnx.Param)
    pure = (
        nnx.to_pure_dict(module_or_state)
        if isinstance(module_or_state, nnx.State)
        else module_or_state
    )
    leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
    return {_path_str(p): jax.ShapeDtypeStruct(np.shape(v), v.dtype) for p, v in leaves}


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    out = []
    for i, part in enumerate(parts):
        out.append(f"(?P<{part}>\\d+)" if i % 2 else re.escape(part))
    return re.compile("".join(out) + r"\Z")


def _match(rules: Sequence[Rule], key: str, side: str):
    """(rule, filled other-side name) of the first rule whose ``side`` template matches."""
    for rule in rules:
        m = _template_regex(getattr(rule, side)).match(key)
        if m:
            other = rule.path if side == "key" else rule.key
            return rule, other.format(**m.groupdict())
    return None, None


def _ignored(key: str, ignore: Iterable[str]) -> bool:
    return any(re.match(p, key) for p in ignore)


def _nest(flat: Mapping[str, np.ndarray]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        parts = [int(p) if p.isdigit() else p for p in name.split(".")]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def convert(
    state_dict: Mapping[str, Any],
    rules: Sequence[Rule],
    like: Any,
    *,
    ignore: Iterable[str] = (),
    strip_prefix: str = "",
    source: str = "state_dict",
) -> dict:
    """torch ``state_dict`` → nested pure dict of the NNX params of ``like`` (a module, an
    abstract module from ``nnx.eval_shape``, or its param state), float32 numpy.

    Args:
      state_dict: name → tensor/array (torch tensors need no torch import here).
      rules: the key → path templates; the first matching rule wins.
      like: gives the param paths and shapes to fill.
      ignore: regexes (``re.match``) of keys deliberately left out (buffers, another tower).
      strip_prefix: removed from every key first (``"module."`` from DataParallel).
      source: names the checkpoint in errors (a file path).

    Raises:
      PortError: every unmapped key, every unfilled param, every shape mismatch, together.
    """
    want = param_paths(like)
    out, filled, mapped_from = {}, set(), {}
    unmapped, mismatched, twice = [], [], []
    for key, value in state_dict.items():
        k = key.removeprefix(strip_prefix) if strip_prefix else key
        if _ignored(k, ignore):
            continue
        rule, path = _match(rules, k, "key")
        if rule is None or path not in want:
            unmapped.append(k if rule is None else f"{k} (rule gives {path}, not a param)")
            continue
        if path in filled:
            twice.append(f"{path} from {mapped_from[path]} and {k}")
            continue
        arr = to_numpy(value).astype(np.float32)
        target = tuple(want[path].shape)
        arr = LAYOUTS[rule.layout][0](arr, target)
        if tuple(arr.shape) != target:
            mismatched.append((k, tuple(np.shape(value)), path, target, rule.layout))
            continue
        out[path] = np.ascontiguousarray(arr)
        filled.add(path)
        mapped_from[path] = k
    unfilled = sorted(set(want) - filled - {m[2] for m in mismatched})
    if unmapped or unfilled or mismatched or twice:
        lines = [f"{source} does not fit {type(like).__name__}:"]
        if mismatched:
            lines.append(
                f"  shape mismatches ({len(mismatched)}): "
                + "; ".join(
                    f"{k} {s} -> {p} expects {t}"
                    + (f" after the {lay!r} layout" if lay != "copy" else "")
                    for k, s, p, t, lay in mismatched
                )
            )
        if unmapped:
            lines.append(f"  unmapped keys ({len(unmapped)}): " + ", ".join(unmapped))
        if unfilled:
            lines.append(f"  unfilled params ({len(unfilled)}): " + ", ".join(unfilled))
        if twice:
            lines.append("  filled twice: " + "; ".join(twice))
        lines.append(
            "  check the config the torch model was built with (a shape mismatch names the "
            "field's tensor), or add a Rule / an ignore pattern for keys that are not params"
        )
        raise PortError(
            "\n".join(lines),
            unmapped=unmapped,
            unfilled=unfilled,
            mismatched=[m[:4] for m in mismatched],
        )
    return _nest(out)


def load_state_dict(module: nnx.Module, state_dict: Mapping[str, Any], rules, **kw) -> nnx.Module:
    """:func:`convert` then copy into ``module`` in place (``model.load_state_dict``).

    Nothing is written unless every param converts."""
    pure = convert(state_dict, rules, module, **kw)
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
    return module


def export(params: Any, rules: Sequence[Rule]) -> dict[str, np.ndarray]:
    """NNX params (module, State or pure dict) → torch-layout ``state_dict`` of numpy arrays."""
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    pure = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
    out, unmapped = {}, []
    for p, v in leaves:
        path = _path_str(p)
        rule, key = _match(rules, path, "path")
        if rule is None:
            unmapped.append(path)
            continue
        arr = np.asarray(v, dtype=np.float32)
        out[key] = np.ascontiguousarray(LAYOUTS[rule.layout][1](arr, arr.shape))
    if unmapped:
        raise PortError(f"no rule exports params {unmapped}", unmapped=unmapped)
    return out


# ---------------------------------------------------------------------------------------------
# layer-by-layer comparison


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
            name = _path_str(path)
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
        mapped = {_match(rules, k, "key")[1] for k in keys}
        if None in mapped:
            continue
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
        name = _path_str(path)
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
        _path_str(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(jax.grad(loss)(params)))[
            0
        ]
    }
    rows, first_bad = [], None
    for key, g in t_grads.items():
        rule, path = _match(rules, key, "key")
        if rule is None or path not in want:
            continue
        tg = LAYOUTS[rule.layout][0](to_numpy(g).astype(np.float32), tuple(want[path].shape))
        jg = j_vals[path]
        abs_err, rel_err = _errors(jg, tg)
        ok = bool(np.all(np.abs(jg - tg) <= at + rt * np.abs(tg)))
        rows.append((key, path, f"{abs_err:.2e}", f"{rel_err:.2e}", ok))
        if not ok and first_bad is None:
            first_bad = key
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
