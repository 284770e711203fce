"""Bring a vit-pytorch ``state_dict`` into the flax :class:`~jaxgrad.models.vit.ViT` (and back),
on the port kit's declarative rules (:mod:`jaxgrad.port`).

The seed ends with ``torch.save(model.state_dict(), "vit_model.pth")``. A state_dict does not
say how the model was built: ``pool='cls'`` and ``pool='mean'`` have the same keys and shapes,
so the config must come with the weights. To use that model in JAX::

    sd = torch.load("vit_model.pth", map_location="cpu")        # torch needed only here
    cfg = ViTConfig(**json.load(open("vit_config.json")))        # or load_checkpoint(...)
    model = ViT(cfg, rngs=nnx.Rngs(0))
    load_torch_state_dict(model, sd)                              # in place; checks every key

or in one call, with the config required beside the weights:
``load_checkpoint("vit_model.pth")`` (reads ``vit_config.json`` from the same folder).

Key names are vit-pytorch 1.x's (``vit_pytorch/vit.py``): ``to_patch_embedding.{1,2,3}``
(LayerNorm, Linear, LayerNorm; index 0 is the einops Rearrange), ``cls_token``,
``pos_embedding``, ``transformer.layers.{i}.0.{norm,to_qkv,to_out.0}``,
``transformer.layers.{i}.1.net.{0,1,4}`` (LayerNorm, Linear, Linear), ``transformer.norm``,
``mlp_head``. Newer vit-pytorch builds a ``pool='mean'`` model without a class token
(``cls_token`` of shape ``[0, dim]``); that model is refused with the field named.

This module never imports torch at module level: values may be numpy arrays or CPU tensors.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from jaxgrad.errors import MissingWeightsError, WeightsError
from jaxgrad.models.vit import ViT, ViTConfig
from jaxgrad.port import PortError, Rule, convert, export, to_numpy

__all__ = [
    "from_torch_state_dict",
    "load_checkpoint",
    "load_torch_state_dict",
    "read_config",
    "rules",
    "to_torch_state_dict",
]


def rules(cfg: ViTConfig) -> list[Rule]:
    """vit-pytorch key → flax param path, with the layout change (Linear transposes)."""

    def lin(t, f, bias=True):
        out = [Rule(f"{t}.weight", f"{f}.kernel", "linear")]
        return out + [Rule(f"{t}.bias", f"{f}.bias")] if bias else out

    def ln(t, f):
        return [Rule(f"{t}.weight", f"{f}.scale"), Rule(f"{t}.bias", f"{f}.bias")]

    t, f = "transformer.layers.{i}", "layers.{i}"
    out = [
        *ln("to_patch_embedding.1", "patch_norm_in"),
        *lin("to_patch_embedding.2", "patch_proj"),
        *ln("to_patch_embedding.3", "patch_norm_out"),
        # leading singleton axes differ across vit-pytorch versions: same numbers, reshaped
        Rule("cls_token", "cls_token", "reshape"),
        Rule("pos_embedding", "pos_embedding", "reshape"),
        *ln(f"{t}.0.norm", f"{f}.attn.norm"),
        *lin(f"{t}.0.to_qkv", f"{f}.attn.to_qkv", bias=False),
        *ln(f"{t}.1.net.0", f"{f}.ff.norm"),
        *lin(f"{t}.1.net.1", f"{f}.ff.fc1"),
        *lin(f"{t}.1.net.4", f"{f}.ff.fc2"),
        *ln("transformer.norm", "norm"),
        *lin("mlp_head", "mlp_head"),
    ]
    if not (cfg.heads == 1 and cfg.dim_head == cfg.dim):  # vit-pytorch's project_out
        out += lin(f"{t}.0.to_out.0", f"{f}.attn.to_out")
    return out


# the ViTConfig fields behind each axis of a vit-pytorch tensor, trailing axes last
_AXES = [
    ("mlp_head.weight", ("num_classes", "dim")),
    ("mlp_head.bias", ("num_classes",)),
    ("net.1.weight", ("mlp_dim", "dim")),
    ("net.1.bias", ("mlp_dim",)),
    ("net.4.weight", ("dim", "mlp_dim")),
    ("to_qkv.weight", ("heads * dim_head", "dim")),
    ("to_out.0.weight", ("dim", "heads * dim_head")),
    ("pos_embedding", ("image_size / patch_size (num_patches + 1 positions)", "dim")),
    ("cls_token", ("dim",)),
    ("to_patch_embedding.1", ("patch_size / channels (patch_dim)",)),
    ("to_patch_embedding.2.weight", ("dim", "patch_size / channels (patch_dim)")),
    ("", ("dim",)),  # every other LayerNorm and bias
]


def _fields_for(mismatched) -> list[str]:
    """The fields whose axes differ between the torch tensor and what the config expects."""
    out = []
    for key, got, _, want in mismatched:
        want_t = tuple(reversed(want)) if len(want) == 2 and not key.endswith("embedding") else want
        names = next(axes for k, axes in _AXES if k in key)
        got, want_t = got[-len(names) :], want_t[-len(names) :]
        out += [n for n, g, w in zip(names, got, want_t) if g != w] or list(names)
    return list(dict.fromkeys(out))


def from_torch_state_dict(state_dict: dict, cfg: ViTConfig) -> dict:
    """vit-pytorch ``state_dict`` → the nested pure dict of :class:`ViT` params (float32 numpy).

    ``cfg`` is required: the keys cannot tell ``pool`` (nor ``dim_head`` from ``heads``) apart.
    Raises :class:`~jaxgrad.port.PortError` naming every missing / unexpected / mis-shaped key
    and the ``ViTConfig`` fields that decide the mis-shaped ones.
    """
    if not isinstance(cfg, ViTConfig):
        raise TypeError(f"cfg must be the ViTConfig the torch model was built with, got {cfg!r}")
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}  # DataParallel prefix
    cls = sd.get("cls_token")
    if cls is not None and to_numpy(cls).size == 0:
        raise PortError(
            "state_dict cls_token has no class token (shape "
            f"{tuple(np.shape(to_numpy(cls)))}): a newer vit-pytorch pool='mean' model, which "
            "has no class token; ViTConfig.pool='mean' ports vit-pytorch 1.x's mean-pool model "
            "(class token kept), not this one",
            mismatched=["cls_token"],
        )
    like = nnx.eval_shape(lambda: ViT(cfg, rngs=nnx.Rngs(0)))
    try:
        return convert(sd, rules(cfg), like, source="vit-pytorch state_dict")
    except PortError as e:
        raise PortError(
            f"{e}\n  ViTConfig fields that differ from the torch model's: "
            f"{', '.join(_fields_for(e.mismatched)) or '(none: keys missing or extra)'}; "
            f"config given: {cfg}",
            unmapped=e.unmapped,
            unfilled=e.unfilled,
            mismatched=e.mismatched,
        ) from None


def load_torch_state_dict(model: ViT, state_dict: dict) -> ViT:
    """Copy a vit-pytorch ``state_dict`` into ``model`` in place (``model.load_state_dict``);
    nothing is written unless every key converts."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, from_torch_state_dict(state_dict, model.cfg))
    nnx.update(model, state)
    return model


def to_torch_state_dict(params: Any, cfg: ViTConfig) -> dict[str, np.ndarray]:
    """Flax params (``nnx.State`` or pure dict) → vit-pytorch ``state_dict`` of numpy arrays.

    ``{k: torch.from_numpy(v) for k, v in ...}`` then ``torch_model.load_state_dict`` exports a
    JAX-trained model to PyTorch. cls/pos embeddings get vit-pytorch 1.x's ``[1, n, dim]``.
    """
    sd = export(params, rules(cfg))
    sd["cls_token"] = sd["cls_token"].reshape(1, 1, cfg.dim)
    sd["pos_embedding"] = sd["pos_embedding"].reshape(1, cfg.num_patches + 1, cfg.dim)
    return sd


def read_config(path: str | Path) -> ViTConfig:
    """``vit_config.json`` → ViTConfig; every field the weights cannot tell must be there."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"{path}: not found. A vit-pytorch state_dict does not record how the model was "
            "built (pool='cls' and pool='mean' have the same keys), so the config must be saved "
            "beside the weights: json.dump({'image_size': ..., 'patch_size': ..., "
            "'num_classes': ..., 'dim': ..., 'depth': ..., 'heads': ..., 'mlp_dim': ..., "
            "'pool': ...}, open('vit_config.json', 'w'))"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected a JSON object of ViT(...) keyword arguments")
    raw.pop("class_names", None)  # jaxgrad's sidecar records them; not a ViT(...) argument
    known = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise WeightsError(f"{path}: unknown ViTConfig fields {unknown}; known: {sorted(known)}")
    required = ("image_size", "patch_size", "num_classes", "dim", "depth", "heads", "mlp_dim")
    missing = [k for k in (*required, "pool") if k not in raw]
    if missing:
        raise WeightsError(
            f"{path}: missing fields {missing}; the state_dict cannot tell them apart"
            + (" (pool: 'cls' or 'mean')" if "pool" in missing else "")
        )
    try:
        return ViTConfig(**raw)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: {e}") from None


def load_checkpoint(weights: str | Path, config: str | Path | None = None) -> ViT:
    """A vit-pytorch checkpoint (``.pth`` from ``torch.save(state_dict)``, or ``.npz``) plus its
    config (default: ``vit_config.json`` in the same folder, required) → a loaded :class:`ViT`."""
    weights = Path(weights)
    cfg = read_config(config if config is not None else weights.with_name("vit_config.json"))
    if not weights.is_file():
        raise MissingWeightsError(f"{weights}: not found")
    if weights.suffix == ".npz":
        with np.load(weights, allow_pickle=False) as z:
            sd = dict(z)
    else:
        import torch

        sd = torch.load(weights, map_location="cpu", weights_only=True)
    model = nnx.eval_shape(lambda: ViT(cfg, rngs=nnx.Rngs(0)))
    try:
        return load_torch_state_dict(model, sd)
    except PortError as e:
        raise PortError(
            f"{weights}: {e}", unmapped=e.unmapped, unfilled=e.unfilled, mismatched=e.mismatched
        ) from None
