"""A small random-initialised transformers ``CLIPModel`` saved with ``save_pretrained``.

No weights are downloadable on the machines that run the tests and the tour, so they exercise
``--image-encoder clip --image-weights DIR`` on one of these (same files, same keys as
``openai/clip-vit-base-patch32``, only smaller and untrained). Needs torch and transformers;
:func:`save_random_clip` raises ImportError naming the extra when they are missing.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["HAVE_TRANSFORMERS", "save_random_clip"]


def _have() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


#: True when ``save_random_clip`` can run (torch and transformers importable)
HAVE_TRANSFORMERS = _have()


def save_random_clip(
    path: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    projection_dim: int = 32,
    seed: int = 0,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` of a random-init ``CLIPModel`` (both towers,
    vision tower of the given sizes, quick_gelu as OpenAI's) into ``path``; returns ``path``."""
    try:
        import torch
        import transformers as T
    except ImportError as e:
        raise ImportError(
            f"save_random_clip needs torch and transformers ({e}): pip install -e '.[torch]'"
        ) from None
    torch.manual_seed(seed)
    common = dict(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        hidden_act="quick_gelu",
    )  # fmt: skip
    cfg = T.CLIPConfig(
        text_config=dict(
            vocab_size=99,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            **common,
        ),
        vision_config=dict(image_size=image_size, patch_size=patch_size, **common),
        projection_dim=projection_dim,
    )
    path = Path(path)
    T.CLIPModel(cfg).eval().save_pretrained(path)
    return path
