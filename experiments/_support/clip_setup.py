"""What ``experiments.clip_contrastive`` builds from its ``Config`` before training: the image
sets, the two-tower model, captions, params, loss and optimizer (:func:`setup`), and the
optimizer's param-groups report. ``cfg`` is that experiment's Config (the tour and the tests
build the same pieces from it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrad.data.captions import Tokenizer, caption_table
from jaxgrad.data.dataset import ImageDataset, train_val_split
from jaxgrad.data.imagefolder import load_image_folder
from jaxgrad.data.synthetic import make_synthetic
from jaxgrad.errors import MissingDataError
from jaxgrad.models.clip import IMAGE_TOWER, ClipConfig, ClipModel
from jaxgrad.models.text import TextConfig
from jaxgrad.models.vit import ViTConfig
from jaxgrad.port.hf_clip import load_pretrained
from jaxgrad.tasks.clip import clip_loss_fn, clip_optimizer, param_groups
from jaxgrad.tasks.clip_eval import print_param_groups
from jaxgrad.tasks.clip_inputs import TowerInputs, tower_inputs, with_image_tower
from jaxgrad.training.distributed import main_print
from jaxgrad.training.loop import init_params
from jaxgrad.training.rng import named_keys
from jaxgrad.training.xla import RUN_ONCE

__all__ = ["Setup", "load_data", "model_config", "report_groups", "setup"]


def load_data(cfg) -> tuple[ImageDataset, ImageDataset]:
    """``(train, val)`` image sets; folder subsets are drawn by ``cfg.seed``."""
    if cfg.data == "synthetic":
        ds = make_synthetic(cfg.n_images + cfg.n_val, seed=cfg.seed)
    else:
        if not Path(cfg.data_dir).is_dir():
            raise MissingDataError(
                f"--data-dir {cfg.data_dir} is not a folder; extract the images first, e.g. "
                "mkdir -p data && tar -xzf ../shared/data/cifar10-train-jpeg.tar.gz -C data"
            )
        ds = load_image_folder(cfg.data_dir, progress=cfg.progress)
        if cfg.n_images and cfg.n_images + cfg.n_val >= len(ds):  # "at most": said, not silent
            main_print(f"note: --n-images {cfg.n_images} + --n-val {cfg.n_val} is not below the "
                       f"{len(ds)} images of {ds.source}: using all of them")  # fmt: skip
        elif cfg.n_images:
            pick = np.random.default_rng(cfg.seed).permutation(len(ds))[: cfg.n_images + cfg.n_val]
            ds = ds.subset(np.sort(pick))
    return train_val_split(ds, cfg.n_val, seed=cfg.seed)


def model_config(cfg, vocab_size: int, image_size: int, tower=None) -> ClipConfig:
    """``tower``: the loaded CLIP vision tower (``--image-encoder clip``); its projection_dim
    is the shared width; with ``--freeze-image`` the model has no image tower (cached)."""
    text = TextConfig(
        vocab_size=vocab_size, max_len=cfg.max_len, dim=cfg.text_dim, depth=cfg.text_depth,
        heads=cfg.heads, mlp_dim=2 * cfg.text_dim,
    )  # fmt: skip
    bias = -10.0 if cfg.loss.startswith("siglip") else None  # SigLIP's initial bias
    if tower is not None:
        image = None if cfg.freeze_image else tower.cfg
        return ClipConfig(image=image, text=text, embed_dim=tower.cfg.projection_dim,
                          logit_bias_init=bias)  # fmt: skip
    image = ViTConfig(
        image_size=image_size, patch_size=cfg.patch_size, dim=cfg.image_dim,
        depth=cfg.image_depth, heads=cfg.heads, dim_head=cfg.image_dim // cfg.heads,
        mlp_dim=2 * cfg.image_dim, dropout=0.0, emb_dropout=0.0,
    )  # fmt: skip
    return ClipConfig(image=image, text=text, embed_dim=cfg.embed_dim, logit_bias_init=bias)


class Setup(NamedTuple):
    """What ``main``, the tour and the tests build from a config (:func:`setup`)."""

    keys: dict[str, jax.Array]  # "init", "data", "step" (the per-step key)
    tokenizer: Tokenizer
    captions: tuple[jax.Array, jax.Array]  # ids, mask [T, C, L]
    graphdef: Any
    params: Any
    rest: Any
    loss_fn: Any  # jaxgrad.tasks.clip.clip_loss_fn
    optimizer: Any  # jaxgrad.tasks.clip.clip_optimizer
    frozen: Any  # the bool mask the optimizer freezes (all False without --freeze-image)
    inputs: TowerInputs  # what batch["images"] holds for train and val (jaxgrad.tasks.clip_inputs)


def setup(cfg, train: ImageDataset, val: ImageDataset | None = None, *,
          mesh=None) -> Setup:  # fmt: skip
    """Model, captions, params, loss and optimizer for ``cfg`` (shared by main, tour, tests).

    ``--image-encoder clip`` loads the tower and prepares ``val`` too (cached features or
    pixel_values); the ViT reads the uint8 images as they are. ``mesh``: a frozen tower's
    features are extracted with the batch split over its devices.
    """
    keys = named_keys(cfg.seed, "init", "data", "step")
    tok, ids, cmask = caption_table(train.class_names, max_len=cfg.max_len)
    tower = load_pretrained(cfg.image_weights) if cfg.image_encoder == "clip" else None
    mcfg = model_config(cfg, len(tok), train.images.shape[1], tower)
    opts = RUN_ONCE if cfg.fast_compile else None
    graphdef, params, rest = init_params(ClipModel, mcfg, keys["init"], compiler_options=opts)
    if tower is None:
        inputs = TowerInputs("images", train.images, None if val is None else val.images)
    else:
        inputs = tower_inputs(
            tower, train.images, None if val is None else val.images,
            frozen=cfg.freeze_image, cache_dir=cfg.feature_cache, mesh=mesh,
        )  # fmt: skip
        if not cfg.freeze_image:  # the pretrained weights replace the random init
            graphdef, params, rest = with_image_tower(graphdef, params, rest, tower)
    captions = (jnp.asarray(ids), jnp.asarray(cmask))
    loss_fn = clip_loss_fn(graphdef, rest, captions, loss=cfg.loss,
                           freeze_image=cfg.freeze_image, use_augment=cfg.augment,
                           image_input=inputs.kind, mesh=mesh)  # fmt: skip
    opt, frozen = clip_optimizer(
        params, steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm,
        freeze_image=cfg.freeze_image and inputs.kind != "features", image_lr=cfg.image_lr,
    )  # fmt: skip
    return Setup(keys, tok, captions, graphdef, params, rest, loss_fn, opt, frozen, inputs)


def report_groups(cfg, s: Setup) -> list[dict]:
    """Print and return the seed's ``param_groups`` check (per module: params, peak lr, state)."""
    image_lr = cfg.lr if cfg.image_lr is None else cfg.image_lr
    groups = param_groups(
        s.optimizer, s.params, s.frozen, lr=lambda m: image_lr if m == IMAGE_TOWER else cfg.lr
    )
    return print_param_groups(groups, cached=s.inputs)
