"""Load a pretrained transformers CLIP image tower from a ``save_pretrained`` folder, without torch.

    tower = load_pretrained("~/.cache/huggingface/hub/models--openai--clip-vit-base-patch32/"
                            "snapshots/<hash>")          # config.json + model.safetensors
    emb = tower(pixel_values)   # [B, 3, 224, 224] float32, CLIP-normalised -> [B, 512]
    # == CLIPModel.get_image_features(pixel_values)  (.pooler_output in transformers 5)

The model is :class:`jaxgrad.models.clip_vision.CLIPVisionTower`; its module names follow
transformers', so the port rules (:func:`rules`) read like the keys and
:func:`jaxgrad.port.compare_layers` pairs every layer with its torch twin.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from jaxgrad.errors import MissingWeightsError, WeightsError
from jaxgrad.models.clip_vision import CLIPVisionConfig, CLIPVisionTower
from jaxgrad.port.rules import PortError, Rule, convert

__all__ = ["CLIPVisionConfig", "CLIPVisionTower", "load_pretrained", "rules"]


def rules(prefix: str = "vision_model.") -> list:
    """transformers key → tower param (:class:`jaxgrad.port.Rule` s), for ``CLIPModel`` /
    ``CLIPVisionModelWithProjection`` (``prefix="vision_model."``) or a bare
    ``CLIPVisionTransformer`` (``prefix=""``)."""
    e, lay = f"{prefix}embeddings", f"{prefix}encoder.layers.{{i}}"
    out = [
        Rule(f"{e}.class_embedding", "embeddings.class_embedding"),
        Rule(f"{e}.patch_embedding.weight", "embeddings.patch_embedding.kernel", "conv"),
        Rule(f"{e}.position_embedding.weight", "embeddings.position_embedding.embedding"),
        Rule("visual_projection.weight", "visual_projection.kernel", "linear"),
    ]
    for ln in ("pre_layrnorm", "post_layernorm"):
        out += [
            Rule(f"{prefix}{ln}.weight", f"{ln}.scale"),
            Rule(f"{prefix}{ln}.bias", f"{ln}.bias"),
        ]
    for ln in ("layer_norm1", "layer_norm2"):
        out += [
            Rule(f"{lay}.{ln}.weight", f"encoder.layers.{{i}}.{ln}.scale"),
            Rule(f"{lay}.{ln}.bias", f"encoder.layers.{{i}}.{ln}.bias"),
        ]
    for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "mlp.fc1", "mlp.fc2"):  # fmt: skip
        out += [
            Rule(f"{lay}.{lin}.weight", f"encoder.layers.{{i}}.{lin}.kernel", "linear"),
            Rule(f"{lay}.{lin}.bias", f"encoder.layers.{{i}}.{lin}.bias"),
        ]
    return out


# keys of a CLIPModel checkpoint that are not the image tower's
_NOT_IMAGE_TOWER = (r"text_model\.", r"text_projection\.", r"logit_scale\Z", r".*position_ids\Z")
_MODEL_TYPES = ("clip", "clip_vision_model")


def _read_config(path: Path) -> tuple[CLIPVisionConfig, dict]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise MissingWeightsError(
            f"{cfg_file}: not found; load_pretrained needs a transformers save_pretrained folder "
            "(config.json + model.safetensors)"
        )
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{cfg_file}: not valid JSON ({e})") from None
    mt = raw.get("model_type")
    if mt not in _MODEL_TYPES:
        raise WeightsError(
            f"{cfg_file}: model_type is {mt!r}, not a CLIP checkpoint (expected one of "
            f"{_MODEL_TYPES}: a CLIPModel or CLIPVisionModelWithProjection)"
        )
    if mt == "clip":
        vision = raw.get("vision_config")
        if not isinstance(vision, dict):
            raise WeightsError(
                f"{cfg_file}: a CLIPModel config without a vision_config dict (field "
                "'vision_config'); the image tower cannot be built"
            )
        # CLIPModel projects with the top-level projection_dim (vision_config's is unused)
        vision = {**vision, "projection_dim": raw.get("projection_dim", 512)}
    else:
        vision = raw
    kw = {}
    for f in dataclasses.fields(CLIPVisionConfig):
        if f.name in vision:
            v = vision[f.name]
            if f.name in ("image_size", "patch_size") and isinstance(v, list | tuple):
                if len(set(v)) != 1:
                    raise WeightsError(f"{cfg_file}: non-square {f.name} {v} is not supported")
                v = v[0]
            kw[f.name] = v
    try:
        return CLIPVisionConfig(**kw), raw
    except ValueError as e:
        raise WeightsError(f"{cfg_file}: {e}") from None


def _weights_file(path: Path) -> Path:
    f = path / "model.safetensors"
    if f.is_file():
        return f
    shards = sorted(path.glob("model-*.safetensors"))
    if shards:
        raise WeightsError(
            f"{path}: sharded safetensors ({len(shards)} files) are not supported; re-save with "
            "save_pretrained(max_shard_size='10GB')"
        )
    other = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    hint = (
        f" (found {other}: load it with transformers and save_pretrained(safe_serialization="
        "True) once)"
        if other
        else ""
    )
    raise MissingWeightsError(f"{f}: not found; load_pretrained reads safetensors only{hint}")


def load_pretrained(path: str | Path) -> CLIPVisionTower:
    """The image tower of a transformers ``save_pretrained`` folder (CLIPModel or
    CLIPVisionModelWithProjection), read with ``safetensors.numpy`` (no torch needed).

    Raises with the path and the key/field named: no config.json or safetensors, another
    model type, a checkpoint without the image tower (text-only), missing / extra /
    mis-shaped keys (:class:`jaxgrad.port.PortError`).
    """
    from safetensors.numpy import load_file

    path = Path(path).expanduser()
    if not path.is_dir():
        raise MissingWeightsError(f"{path}: not a directory (a save_pretrained folder)")
    cfg, _ = _read_config(path)
    wfile = _weights_file(path)
    try:
        sd = load_file(str(wfile))
    except Exception as e:  # safetensors raises its own SafetensorError on bad headers
        raise WeightsError(f"{wfile}: not a readable safetensors file ({e})") from None
    if not any(k.startswith("vision_model.") for k in sd):
        raise PortError(
            f"{wfile}: no 'vision_model.*' keys: this checkpoint has no image tower (a text-only "
            f"CLIP? keys start with {sorted({k.split('.')[0] for k in sd})}); pass a CLIPModel "
            "or CLIPVisionModelWithProjection folder",
            unmapped=[],
        )
    if "visual_projection.weight" not in sd:
        raise PortError(
            f"{wfile}: no 'visual_projection.weight': a CLIPVisionModel without projection; "
            "save a CLIPModel or CLIPVisionModelWithProjection instead",
            unfilled=["visual_projection.kernel"],
        )
    tower = nnx.eval_shape(lambda: CLIPVisionTower(cfg, rngs=nnx.Rngs(0)))
    pure = convert(sd, rules(), tower, ignore=_NOT_IMAGE_TOWER, source=str(wfile))
    graphdef, state = nnx.split(tower, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    return nnx.merge(graphdef, state)
