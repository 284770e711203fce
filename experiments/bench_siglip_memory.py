"""Peak memory of SigLIP's loss: the full ``[B, B]`` form vs the chunked and ring forms.

    python -m experiments.bench_siglip_memory --batch 4096 --dim 512 --chunk 512 --devices 4

Nothing runs: each form's ``jax.value_and_grad`` (loss and gradients w.r.t. both feature
matrices, the scale and the bias: what a train step needs) is lowered and compiled for
float32 ``[B, D]`` features, and XLA's ``compiled.memory_analysis()`` gives the temporary
buffers it allocates (``temp``, per device) beside the arguments and outputs. Rows: the full
:func:`jaxgrad.losses.contrastive.siglip_loss` on one device; :func:`jaxgrad.losses.siglip_chunked.
siglip_loss_chunked` with ``--chunk``; and, on a ``--devices`` mesh (fake CPU devices via
``XLA_FLAGS=--xla_force_host_platform_device_count``, set here before jax is imported), the full
loss on sharded features (jit inserts the all-gather) and :func:`jaxgrad.losses.siglip_chunked.
siglip_loss_ring`.
"""

from __future__ import annotations

import dataclasses
import os

from jaxgrad.errors import ConfigError
from jaxgrad.report.cli import CheckedConfig, option, run_main


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    """Peak memory of the SigLIP loss forms (compiled, not run)."""

    batch: int = option(4096, "global batch B", ge=2)
    dim: int = option(512, "embedding width D", ge=1)
    chunk: int = option(512, "text chunk rows (must divide the batch)", ge=1)
    devices: int = option(4, "mesh size for the ring rows (1 leaves them out)", ge=1)

    def __post_init__(self):
        super().__post_init__()
        if self.batch % self.chunk or self.batch % self.devices:
            raise ConfigError(
                f"--batch {self.batch} must split into --chunk {self.chunk} rows and over "
                f"--devices {self.devices}; pick divisors"
            )

    @classmethod
    def tiny(cls) -> Config:
        return cls(batch=64, dim=16, chunk=16, devices=2)


def _memory(fn, *args) -> dict[str, float]:
    """MiB of XLA's temp / argument / output buffers for ``value_and_grad(fn)`` (per device)."""
    import jax

    grad = jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True)
    m = jax.jit(grad).lower(*args).compile().memory_analysis()
    mib = 2.0**20
    return {
        "temp": m.temp_size_in_bytes / mib,
        "args": m.argument_size_in_bytes / mib,
        "out": m.output_size_in_bytes / mib,
    }


def main(cfg: Config) -> list[tuple]:
    # read when the backend starts (first device use), so setting it here is in time
    if cfg.devices > 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={cfg.devices}"
        )
    import jax
    import jax.numpy as jnp

    from jaxgrad.losses.contrastive import siglip_loss
    from jaxgrad.losses.siglip_chunked import siglip_loss_chunked, siglip_loss_ring
    from jaxgrad.training.parallel import batch_sharding, make_mesh, replicated

    b, d = cfg.batch, cfg.dim
    feats = jax.ShapeDtypeStruct((b, d), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)

    def form(loss, **kw):
        def fn(img, txt, scale, bias):
            return loss(image_features=img, text_features=txt, logit_scale=scale,
                        logit_bias=bias, **kw)  # fmt: skip

        return fn

    rows = [
        ("full siglip_loss", 1, _memory(form(siglip_loss), feats, feats, scalar, scalar)),
        (f"siglip_loss_chunked, chunk {cfg.chunk}", 1,
         _memory(form(siglip_loss_chunked, chunk=cfg.chunk), feats, feats, scalar, scalar)),
    ]  # fmt: skip
    if cfg.devices > 1:
        mesh = make_mesh(cfg.devices)
        sh = jax.ShapeDtypeStruct((b, d), jnp.float32, sharding=batch_sharding(mesh))
        rep = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated(mesh))
        n = cfg.devices
        rows.append(("full siglip_loss, sharded features", n,
                     _memory(form(siglip_loss), sh, sh, rep, rep)))  # fmt: skip
        rows.append(("siglip_loss_ring", n,
                     _memory(form(siglip_loss_ring, mesh=mesh), sh, sh, rep, rep)))  # fmt: skip
    print(f"B = {b}, D = {d}, float32, value_and_grad; MiB per device "
          f"(jax {jax.__version__}, {jax.devices()[0].platform})")  # fmt: skip
    print(f"{'form':42s} {'devices':>7s} {'temp':>9s} {'args':>7s} {'out':>7s}")
    for name, n, m in rows:
        print(f"{name:42s} {n:7d} {m['temp']:9.1f} {m['args']:7.1f} {m['out']:7.1f}")
    return rows


if __name__ == "__main__":
    run_main(main, Config)
