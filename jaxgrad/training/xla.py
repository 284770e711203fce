"""XLA compiler options shared across jaxgrad, the persistent compilation cache, and the host
memory setting XLA:CPU wants (:func:`keep_host_memory`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from jaxgrad.errors import ConfigError

__all__ = ["CACHE_ENV", "MALLOC_ENV", "RUN_ONCE", "WIDE_VECTORS", "compile_cache_dir", "enable_compile_cache",
           "keep_host_memory"]  # fmt: skip

#: ``jax.jit(..., compiler_options=RUN_ONCE)`` for programs that run once or briefly (model init,
#: the doctor's summaries, the coverage probe, tiny demo runs): XLA's backend optimisation level 0
#: compiles several times faster on CPU, and their run time does not matter. Float results may
#: differ from an optimised build in the last ulp.
RUN_ONCE = {"xla_backend_optimization_level": 0}

#: compiler options for the ViT's training steps: AVX-512 vectors for XLA:CPU's element-wise
#: code where the CPU has them (LLVM prefers 256 bits by default, to spare older Xeons' clock);
#: the reduced ViT step 6% faster on a Sapphire Rapids core (docs/results/vit_cpu_profile.md).
#: Other backends, and CPUs without AVX-512, ignore it; numerics are unchanged.
WIDE_VECTORS = {"xla_cpu_prefer_vector_width": 512}

#: environment variable: unset = the default folder; ``off`` (or ``0``, ``no``, ``false``, empty)
#: = no cache; anything else = the cache folder to use
CACHE_ENV = "JAXGRAD_COMPILE_CACHE"
_OFF = {"", "0", "off", "no", "false", "none"}


def compile_cache_dir() -> Path | None:
    """Where the experiments' compiled programs are kept: ``$JAXGRAD_COMPILE_CACHE`` if set
    (None when it says ``off``), else ``$XDG_CACHE_HOME/jaxgrad/xla`` (``~/.cache/jaxgrad/xla``)."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxgrad" / "xla"


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache; return the folder (None: left off).

    A second run of an experiment or the tour then loads its compiled programs from disk
    instead of compiling them again. ``path`` overrides :func:`compile_cache_dir`. Every
    program is cached however fast it compiled (the tour's are small: JAX's default keeps only
    those that took over 1 s). Call before the first compilation; the experiments call it in
    :func:`jaxgrad.report.cli.parse` (``--no-compile-cache`` or ``JAXGRAD_COMPILE_CACHE=off`` skip it).
    Raises OSError naming the folder if it cannot be created.
    """
    import jax

    folder = Path(path).expanduser() if path is not None else compile_cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(
            f"cannot create the compilation cache folder {folder} ({e}): set {CACHE_ENV} to a "
            f"writable folder, or to 'off' (or pass --no-compile-cache) to run without it."
        ) from e
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


#: environment variable: ``keep`` (or unset) tunes glibc; ``system`` (or ``off``, ``0``...) leaves
#: the C allocator as it is; anything else is refused
MALLOC_ENV = "JAXGRAD_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters


def keep_host_memory() -> bool:
    """Keep freed host memory in the process for the next call instead of returning it to the
    OS; True if glibc took the settings (False elsewhere, or with ``JAXGRAD_MALLOC=system``).

    XLA:CPU allocates each call's temporaries (~160 MB for the reduced ViT step at batch 64)
    and frees them when the call ends. glibc serves blocks that large with ``mmap`` and unmaps
    them on free, so every step page-faults all of it back in: 40,780 page faults and ~25% of
    the step's CPU time (docs/results/vit_cpu_profile.md). ``mallopt`` turns that off (no mmap,
    no trimming, one arena so XLA's worker threads reuse the same heap): the process stays at
    its peak heap size, as with tcmalloc or jemalloc. Call it before JAX's first computation
    (the experiments do, in :func:`jaxgrad.report.cli.parse`).
    """
    setting = os.environ.get(MALLOC_ENV, "").strip().lower()
    if setting in _OFF - {""} | {"system"}:
        return False
    if setting not in ("", "keep"):
        raise ConfigError(f"{MALLOC_ENV}={setting!r}: use 'keep' (the default: keep freed host "
                          "memory for XLA's next call) or 'system' (glibc's own settings)")  # fmt: skip
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to set
        return False
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**30), (_M_ARENA_MAX, 1))
    return all(mallopt(param, value) == 1 for param, value in settings)
