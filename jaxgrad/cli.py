"""Frozen-dataclass configs → command lines, one flag per field, with ``--help`` that explains.

Declare each field with :func:`option` so its default and its reason sit together::

    @dataclasses.dataclass(frozen=True)
    class Config:
        lr: float = option(1e-3, "Adam learning rate (the seed's value)")
        recipe: str = option("seed", "training recipe", choices=("seed", "strong"))

        @classmethod
        def tiny(cls): return cls(lr=1e-2)

    cfg = parse(Config)   # --lr 0.01 --recipe strong --tiny --help

``--tiny`` starts from ``Config.tiny()``; explicit flags override it. Parsing also turns on
the persistent compilation cache (:func:`jaxgrad.xla.enable_compile_cache`) unless
``--no-compile-cache`` is given. A config's
``__post_init__`` may raise ValueError; the message is shown as a usage error (exit code 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from jaxgrad.xla import enable_compile_cache

__all__ = ["option", "parse", "positive", "to_dict"]

C = TypeVar("C")


def option(default: Any, help: str, *, choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field with its default, a help text and optional choices."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for sequence defaults: configs are frozen")
    return dataclasses.field(default=default, metadata=meta)


def positive(cfg: Any, *names: str) -> None:
    """Raise ValueError naming the first field in ``names`` that is not > 0."""
    for n in names:
        v = getattr(cfg, n)
        if v is not None and v <= 0:
            flag = "--" + n.replace("_", "-")
            raise ValueError(f"{flag} must be > 0, got {v}")


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


def _parser_for(cls: type, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--tiny", action="store_true", help="start from the tiny() config (seconds on CPU)"
    )
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not keep compiled programs in the persistent cache (jaxgrad.xla; the env var "
        "JAXGRAD_COMPILE_CACHE=off does the same, =PATH moves it)",
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp, optional = _unwrap_optional(hints[f.name])
        kw: dict[str, Any] = {"help": f.metadata.get("help", ""), "default": argparse.SUPPRESS}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            parser.add_argument(flag, nargs="*", type=inner, **kw)
            continue
        conv = tp if tp in (int, float, str) else str
        if optional:
            base = conv

            def conv(s: str, base=base):
                return None if s.lower() == "none" else base(s)

            kw["help"] += " ('none' to unset)"
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
    if not ns.pop("no_compile_cache", False):
        enable_compile_cache()
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in ns.items()}
    try:
        base = cls.tiny() if tiny else cls()
        return dataclasses.replace(base, **overrides)
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits
