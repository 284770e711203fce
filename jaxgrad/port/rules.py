"""State_dict -> NNX params by declarative rules (see :mod:`jaxgrad.port`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from jaxgrad.autodiff.freeze import path_str
from jaxgrad.errors import WeightsError

__all__ = [
    "match_rule",
    "LAYOUTS",
    "PortError",
    "Rule",
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


class PortError(WeightsError):
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
    return {
        path_str(p, ".", root=""): jax.ShapeDtypeStruct(np.shape(v), v.dtype) for p, v in leaves
    }


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    out = []
    for i, part in enumerate(parts):
        out.append(f"(?P<{part}>\\d+)" if i % 2 else re.escape(part))
    return re.compile("".join(out) + r"\Z")


def match_rule(rules: Sequence[Rule], key: str, side: str):
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
        rule, path = match_rule(rules, k, "key")
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
        path = path_str(p, ".", root="")
        rule, key = match_rule(rules, path, "path")
        if rule is None:
            unmapped.append(path)
            continue
        arr = np.asarray(v, dtype=np.float32)
        out[key] = np.ascontiguousarray(LAYOUTS[rule.layout][1](arr, arr.shape))
    if unmapped:
        raise PortError(f"no rule exports params {unmapped}", unmapped=unmapped)
    return out
