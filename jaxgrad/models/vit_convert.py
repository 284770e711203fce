"""Bring a vit-pytorch ``state_dict`` into the flax :class:`~jaxgrad.models.vit.ViT` (and back).

The seed ends with ``torch.save(model.state_dict(), "vit_model.pth")``. To use that model in
JAX::

    sd = torch.load("vit_model.pth", map_location="cpu")        # torch needed only here
    model = ViT(ViTConfig.seed(), rngs=nnx.Rngs(0))
    load_torch_state_dict(model, sd)                              # in place; checks every key

Key names are vit-pytorch 1.x's (``vit_pytorch/vit.py``): ``to_patch_embedding.{1,2,3}``
(LayerNorm, Linear, LayerNorm; index 0 is the einops Rearrange), ``cls_token``,
``pos_embedding``, ``transformer.layers.{i}.0.{norm,to_qkv,to_out.0}``,
``transformer.layers.{i}.1.net.{0,1,4}`` (LayerNorm, Linear, Linear), ``transformer.norm``,
``mlp_head``. torch Linear weights are ``[out, in]``; flax kernels are ``[in, out]``.

This module never imports torch: values may be numpy arrays or CPU tensors (anything with
``.detach().cpu().numpy()`` or accepted by ``np.asarray``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from jaxgrad.models.vit import ViT, ViTConfig

__all__ = ["from_torch_state_dict", "key_map", "load_torch_state_dict", "to_torch_state_dict"]


def key_map(cfg: ViTConfig) -> dict[str, tuple[tuple, str]]:
    """torch key → (flax param path, kind) with kind ``"T"`` (transpose), ``"="`` or
    ``"reshape"`` (cls/pos embeddings, whose leading singleton axes differ across versions)."""

    def lin(t: str, f: tuple, bias: bool = True):
        out = {f"{t}.weight": ((*f, "kernel"), "T")}
        if bias:
            out[f"{t}.bias"] = ((*f, "bias"), "=")
        return out

    def ln(t: str, f: tuple):
        return {f"{t}.weight": ((*f, "scale"), "="), f"{t}.bias": ((*f, "bias"), "=")}

    m = {
        **ln("to_patch_embedding.1", ("patch_norm_in",)),
        **lin("to_patch_embedding.2", ("patch_proj",)),
        **ln("to_patch_embedding.3", ("patch_norm_out",)),
        "cls_token": (("cls_token",), "reshape"),
        "pos_embedding": (("pos_embedding",), "reshape"),
    }
    project_out = not (cfg.heads == 1 and cfg.dim_head == cfg.dim)
    for i in range(cfg.depth):
        t, f = f"transformer.layers.{i}", ("layers", i)
        m |= ln(f"{t}.0.norm", (*f, "attn", "norm"))
        m |= lin(f"{t}.0.to_qkv", (*f, "attn", "to_qkv"), bias=False)
        if project_out:
            m |= lin(f"{t}.0.to_out.0", (*f, "attn", "to_out"))
        m |= ln(f"{t}.1.net.0", (*f, "ff", "norm"))
        m |= lin(f"{t}.1.net.1", (*f, "ff", "fc1"))
        m |= lin(f"{t}.1.net.4", (*f, "ff", "fc2"))
    m |= ln("transformer.norm", ("norm",))
    m |= lin("mlp_head", ("mlp_head",))
    return m


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor, without importing torch
        v = v.detach().cpu().float().numpy()
    return np.asarray(v, dtype=np.float32)


def _get(tree: dict, path: tuple):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def from_torch_state_dict(state_dict: dict, cfg: ViTConfig) -> dict:
    """vit-pytorch ``state_dict`` → the nested pure dict of :class:`ViT` params (float32 numpy).

    Raises ValueError naming every missing or unexpected key, or the first shape mismatch
    (usually a config that differs from the one the torch model was built with).
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}  # DataParallel prefix
    like = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: ViT(cfg, rngs=nnx.Rngs(0)))))
    mapping = key_map(cfg)
    missing = sorted(set(mapping) - set(sd))
    unexpected = sorted(set(sd) - set(mapping))
    if missing or unexpected:
        raise ValueError(
            f"state_dict does not match a vit-pytorch ViT with {cfg}: missing keys {missing}, "
            f"unexpected keys {unexpected}. Pass the ViTConfig the torch model was built with "
            "(depth, dim, mlp_dim, pool='cls')."
        )
    out: dict = {}
    for tkey, (path, kind) in mapping.items():
        value = _to_numpy(sd[tkey])
        want = tuple(_get(like, path).shape)
        if kind == "T":
            value = value.T
        elif kind == "reshape" and value.size == int(np.prod(want)):
            value = value.reshape(want)
        if value.shape != want:
            raise ValueError(
                f"{tkey}: shape {tuple(np.shape(sd[tkey]))} does not fit flax param "
                f"{'/'.join(map(str, path))} of shape {want}; check the ViTConfig "
                "(dim, heads * dim_head, mlp_dim, patch_size, image_size, num_classes)"
            )
        _set(out, path, np.ascontiguousarray(value))
    return out


def load_torch_state_dict(model: ViT, state_dict: dict) -> ViT:
    """Copy a vit-pytorch ``state_dict`` into ``model`` in place (``model.load_state_dict``)."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, from_torch_state_dict(state_dict, model.cfg))
    nnx.update(model, state)
    return model


def to_torch_state_dict(params: Any, cfg: ViTConfig) -> dict[str, np.ndarray]:
    """Flax params (``nnx.State`` or pure dict) → vit-pytorch ``state_dict`` of numpy arrays.

    ``{k: torch.from_numpy(v) for k, v in ...}`` then ``torch_model.load_state_dict`` exports a
    JAX-trained model to PyTorch. cls/pos embeddings get vit-pytorch's ``[1, n, dim]`` shapes.
    """
    pure = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    out = {}
    for tkey, (path, kind) in key_map(cfg).items():
        value = np.asarray(_get(pure, path), dtype=np.float32)
        out[tkey] = np.ascontiguousarray(value.T if kind == "T" else value)
    return out
