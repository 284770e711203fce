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
    "LAYOUTS",
    "PortError",
    "Rule",
    "convert",
    "export",
    "load_state_dict",
    "mha_rules",
    "param_paths",
    "part_rows",
    "rule_targets",
    "to_nnx_parts",
    "to_numpy",
]


class Rule(NamedTuple):
    """One torch key template → one NNX param path template (dots between parts), or → a
    tuple of path templates for a fused tensor: the torch tensor is the concatenation, along
    its axis 0, of one part per path, in order (``nn.MultiheadAttention``'s ``in_proj_weight``
    ``[3E, E]`` = ``[W_q; W_k; W_v]``). Each part's size comes from its NNX param's shape and
    the layout is applied per part; :func:`export` concatenates the parts back."""

    key: str  # e.g. "encoder.layers.{i}.self_attn.q_proj.weight"
    path: str | tuple[str, ...]  # e.g. "encoder.layers.{i}.self_attn.q_proj.kernel"
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


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def mha_rules(
    key_prefix: str, path_prefix: str, *, names: tuple[str, str, str, str] = (
        "q_proj", "k_proj", "v_proj", "out_proj"),
) -> list[Rule]:  # fmt: skip
    """Rules for one ``torch.nn.MultiheadAttention`` at ``key_prefix`` (open_clip:
    ``"transformer.resblocks.{i}.attn"``) → an NNX attention at ``path_prefix`` with separate
    q / k / v / out ``nnx.Linear`` s (``names``; e.g. :class:`jaxgrad.models.mha.
    MultiheadAttention`): the fused ``in_proj_weight [3E, E]`` / ``in_proj_bias [3E]`` are
    split into q, k, v (in that order, torch's), and joined again by :func:`export`."""
    q, k, v, out = (_join(path_prefix, n) for n in names)
    return [
        Rule(
            _join(key_prefix, "in_proj_weight"),
            (f"{q}.kernel", f"{k}.kernel", f"{v}.kernel"),
            "linear",
        ),  # fmt: skip
        Rule(_join(key_prefix, "in_proj_bias"), (f"{q}.bias", f"{k}.bias", f"{v}.bias")),
        Rule(_join(key_prefix, "out_proj.weight"), f"{out}.kernel", "linear"),
        Rule(_join(key_prefix, "out_proj.bias"), f"{out}.bias"),
    ]


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


def _paths(rule: Rule) -> tuple[str, ...]:
    return rule.path if isinstance(rule.path, tuple) else (rule.path,)


def rule_targets(rules: Sequence[Rule], key: str) -> tuple[Rule | None, tuple[str, ...]]:
    """(first rule whose key template matches ``key``, its filled NNX paths) or (None, ())."""
    for rule in rules:
        m = _template_regex(rule.key).match(key)
        if m:
            return rule, tuple(p.format(**m.groupdict()) for p in _paths(rule))
    return None, ()


def _source(rules: Sequence[Rule], path: str) -> tuple[Rule | None, str | None, int | None]:
    """(rule, filled torch key, part index or None when not fused) for an NNX param path."""
    for rule in rules:
        for part, template in enumerate(_paths(rule)):
            m = _template_regex(template).match(path)
            if m:
                fused = isinstance(rule.path, tuple)
                return rule, rule.key.format(**m.groupdict()), part if fused else None
    return None, None, None


def part_rows(rule: Rule, targets: Sequence[tuple[int, ...]]) -> list[int]:
    """Rows of the torch tensor's axis 0 that each NNX target takes (its torch-layout shape)."""
    back = LAYOUTS[rule.layout][1]
    # a zero-stride view: only the shape of the torch layout is needed, not the numbers
    return [back(np.broadcast_to(np.float32(0), t), t).shape[0] for t in targets]


def to_nnx_parts(rule: Rule, arr: np.ndarray, targets: Sequence[tuple[int, ...]]) -> list | None:
    """A torch tensor → one array per NNX target (split along axis 0 for a fused rule, then the
    layout); None when a fused tensor's rows do not add up to its parts'."""
    fwd = LAYOUTS[rule.layout][0]
    if not isinstance(rule.path, tuple):
        return [fwd(arr, tuple(targets[0]))]
    rows = part_rows(rule, targets)
    if arr.ndim == 0 or sum(rows) != arr.shape[0]:
        return None
    parts = np.split(arr, np.cumsum(rows)[:-1], axis=0)
    return [fwd(p, tuple(t)) for p, t in zip(parts, targets, strict=True)]


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
        rule, paths = rule_targets(rules, k)
        missing = [p for p in paths if p not in want]
        if rule is None or missing:
            unmapped.append(k if rule is None else f"{k} (rule gives {missing[0]}, not a param)")
            continue
        again = [p for p in paths if p in filled]
        if again:
            twice.append(f"{again[0]} from {mapped_from[again[0]]} and {k}")
            continue
        targets = [tuple(want[p].shape) for p in paths]
        parts = to_nnx_parts(rule, to_numpy(value).astype(np.float32), targets)
        if parts is None or any(tuple(a.shape) != t for a, t in zip(parts, targets)):
            shape = tuple(np.shape(value))
            if len(paths) == 1:
                mismatched.append((k, shape, paths[0], targets[0], rule.layout))
            else:  # a fused tensor: its parts' shapes, joined
                mismatched.append((k, shape, " + ".join(paths), " + ".join(map(str, targets)),
                                   f"{rule.layout} per part"))  # fmt: skip
            continue
        for p, a in zip(paths, parts):
            out[p] = np.ascontiguousarray(a)
            filled.add(p)
            mapped_from[p] = k
    bad = {p for m in mismatched for p in m[2].split(" + ")}
    unfilled = sorted(set(want) - filled - bad)
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
    out, unmapped, fused = {}, [], {}
    for p, v in leaves:
        path = path_str(p, ".", root="")
        rule, key, part = _source(rules, path)
        if rule is None:
            unmapped.append(path)
            continue
        arr = np.asarray(v, dtype=np.float32)
        arr = LAYOUTS[rule.layout][1](arr, arr.shape)
        if part is None:
            out[key] = np.ascontiguousarray(arr)
        else:  # one part of a fused tensor: joined once every part is here
            out.setdefault(key, None)
            fused.setdefault(key, (rule, {}))[1][part] = arr
    for key, (rule, parts) in fused.items():
        n = len(rule.path)
        if len(parts) != n:
            lost = [rule.path[i] for i in range(n) if i not in parts]
            unmapped.append(f"{key} (no param for its parts {lost})")
            continue
        out[key] = np.ascontiguousarray(np.concatenate([parts[i] for i in range(n)], axis=0))
    if unmapped:
        raise PortError(f"no rule exports params {unmapped}", unmapped=unmapped)
    return {k: v for k, v in out.items() if v is not None}
