"""Frozen-dataclass configs → command lines, one flag per field, with ``--help`` that explains.

Declare each field with :func:`option` so its default and its reason sit together::

    @dataclasses.dataclass(frozen=True)
    class Config(CheckedConfig):
        lr: float = option(1e-3, "Adam learning rate (the seed's value)")
        recipe: str = option("seed", "training recipe", choices=("seed", "strong"))

        @classmethod
        def tiny(cls): return cls(lr=1e-2)

    cfg = parse(Config)   # --lr 0.01 --recipe strong --tiny --help

``--tiny`` starts from ``Config.tiny()``; explicit flags override it. Parsing also turns on
the persistent compilation cache (:func:`jaxgrad.training.xla.enable_compile_cache`) unless
``--no-compile-cache`` is given, and keeps freed host memory for XLA:CPU's next call
(:func:`jaxgrad.training.xla.keep_host_memory`; ``JAXGRAD_MALLOC=system`` leaves it). A config's
``__post_init__`` may raise ValueError; the message is shown as a usage error (exit code 2).

Validation (:func:`check_config`, run by :func:`parse` on every config and, for a subclass of
:class:`CheckedConfig`, whenever one is built): every float value (also inside an Optional or a
tuple) must be finite, and a field declared with bounds must lie in them::

    label_smoothing: float = option(0.0, "...", ge=0, lt=1)   # a probability: [0, 1)
    weight_decay: float = option(0.05, "...", ge=0)          # a rate or decay: >= 0

The error names the flag: ``--label-smoothing must be < 1, got 2.0``.

Every experiment's ``if __name__ == "__main__":`` is :func:`run_main` (``run_main(main, Config)``): a
:class:`jaxgrad.errors.UserError` raised anywhere in the run (a flag, a data folder, a
checkpoint, weights, a cache, the out-dir) ends it with ONE line on stderr,
``error: <message>``, and exit code 2; ``--traceback`` (or ``JAXGRAD_TRACEBACK=1``) adds the
traceback. Any other exception is a bug in jaxgrad and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import traceback
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from jaxgrad.errors import ConfigError, UserError
from jaxgrad.training.xla import enable_compile_cache, keep_host_memory

__all__ = ["CheckedConfig", "check_config", "one_line", "option", "parse", "run_main",
           "to_dict"]  # fmt: skip

C = TypeVar("C")


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with its default, a help text, optional choices and optional bounds
    (``ge``/``gt``/``le``/``lt``: ``>=``, ``>``, ``<=``, ``<``), checked by :func:`check_config`
    for the value (or each element of a tuple; None always passes)."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    bounds = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    if bounds:
        meta["bounds"] = bounds
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for sequence defaults: configs are frozen")
    return dataclasses.field(default=default, metadata=meta)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_value(name: str, v: Any, bounds: dict) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{_flag(name)} must be a finite number, got {v}")
    ok = {"ge": v >= bounds.get("ge", v), "gt": "gt" not in bounds or v > bounds["gt"],
          "le": v <= bounds.get("le", v), "lt": "lt" not in bounds or v < bounds["lt"]}  # fmt: skip
    for k, good in ok.items():
        if not good:
            raise ConfigError(f"{_flag(name)} must be {_BOUNDS[k]} {bounds[k]}, got {v}")


def check_config(cfg: Any) -> None:
    """Raise ConfigError naming the flag of the first field whose value is a non-finite float
    or lies outside the bounds given to :func:`option`."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        bounds = f.metadata.get("bounds", {})
        for x in v if isinstance(v, tuple) else (v,):
            _check_value(f.name, x, bounds)


class CheckedConfig:
    """Base of every experiment's ``Config``: building one (flags or code) runs
    :func:`check_config`. A subclass with checks of its own calls ``super().__post_init__()``."""

    def __post_init__(self):
        check_config(self)


def to_dict(cfg: Any) -> dict:
    """The config as a plain dict (for JSON metrics files)."""
    return dataclasses.asdict(cfg)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _show(value: Any) -> str:
    """A default or choice as it is typed on the command line."""
    if isinstance(value, tuple):
        return " ".join(_show(v) for v in value) if value else "(empty)"
    if value is None:
        return "none"
    if value == "":
        return "''"
    return str(value)


def _help_text(f: dataclasses.Field, tp: Any, optional: bool) -> str:
    """The field's help, then its choices, its default and how to unset it; ``%`` escaped."""
    text = f.metadata.get("help", "")
    if "choices" in f.metadata:
        text += f" [choices: {', '.join(_show(c) for c in f.metadata['choices'])}]"
    text += f" (default: {_show(f.default)}"
    if optional and tp is not bool:
        text += "; 'none' to unset"
    return (text + ")").replace("%", "%%")


def _parser_for(cls: type, description: str | None) -> argparse.ArgumentParser:
    # raw description: module docstrings keep their lines (PyTorch snippets stay readable)
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flag, text in (
        ("--tiny", "start from the tiny() config: checks the pipeline on CPU in seconds to a few "
                   "minutes; its numbers are not results"),
        ("--no-compile-cache", "do not keep compiled programs in the persistent cache "
                               "(jaxgrad.training.xla; the env var JAXGRAD_COMPILE_CACHE=off does "
                               "the same, =PATH moves it)"),
        ("--traceback", "on a refusal (error: ...), also print the Python traceback (env "
                        "JAXGRAD_TRACEBACK=1)"),
    ):  # fmt: skip
        parser.add_argument(flag, action="store_true", help=text)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = _flag(f.name)
        tp, optional = _unwrap_optional(hints[f.name])
        kw: dict[str, Any] = {"help": _help_text(f, tp, optional), "default": argparse.SUPPRESS}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            kw["metavar"] = getattr(inner, "__name__", "VALUE").upper()  # choices: in the help
            parser.add_argument(flag, nargs="*", type=inner, **kw)
            continue
        conv = tp if tp in (int, float, str) else str
        if optional:
            base = conv

            def conv(s: str, base=base):
                return None if s.lower() == "none" else base(s)

        kw["type"] = conv
        kw["metavar"] = getattr(tp, "__name__", "VALUE").upper()
        parser.add_argument(flag, **kw)
    return parser


def parse(cls: type[C], argv: Sequence[str] | None = None, description: str | None = None) -> C:
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of the frozen dataclass ``cls``.

    ``description`` defaults to the calling experiment module's docstring.
    """
    if description is None:
        mod = sys.modules.get(cls.__module__)
        description = (mod.__doc__ or "").strip() if mod else None
    parser = _parser_for(cls, description)
    ns = vars(parser.parse_args(argv))
    tiny = ns.pop("tiny", False)
    ns.pop("traceback", None)  # read by run_main()
    if not ns.pop("no_compile_cache", False):
        enable_compile_cache()
    keep_host_memory()
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in ns.items()}
    try:
        base = cls.tiny() if tiny else cls()
        cfg = dataclasses.replace(base, **overrides)
        check_config(cfg)
        return cfg
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def one_line(message: str) -> str:
    """A multi-line refusal as one line: its lines joined by ``; `` (after a ``:``, a space)."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    out = parts[0] if parts else ""
    for p in parts[1:]:
        out += (" " if out.endswith(":") else "; ") + p
    return out


def run_main(main: Callable[..., Any], cls: type | None = None, argv: Sequence[str] | None = None):
    """An experiment's entry point: ``main(parse(cls, argv))`` (``main()`` when ``cls`` is None,
    its return value then the exit code), a :class:`~jaxgrad.errors.UserError` turned into one
    line ``error: <message>`` on stderr and exit code 2 (plus the traceback under
    ``--traceback`` or ``JAXGRAD_TRACEBACK=1``). Other exceptions propagate with their
    traceback: they are bugs."""
    args = sys.argv[1:] if argv is None else list(argv)
    show = "--traceback" in args or os.environ.get("JAXGRAD_TRACEBACK", "") not in ("", "0")
    try:
        if cls is None:
            return_code = main()
            raise SystemExit(return_code if isinstance(return_code, int) else 0)
        return main(parse(cls, args))
    except UserError as e:
        if show:
            traceback.print_exc()
        print(f"error: {one_line(str(e))}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
