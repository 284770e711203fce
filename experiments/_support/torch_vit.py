"""A PyTorch reference of vit-pytorch's ``ViT`` (vit_pytorch/vit.py, 1.x), line by line.

Used by the parity tests (tests/test_torch_vit.py) and the benchmarks; it does not depend on
the vit-pytorch package (which pulls torchvision) nor on einops: the two ``rearrange`` calls
are written as reshape/permute. Module names and nesting are vit-pytorch's, so
``state_dict()`` keys are identical (``to_patch_embedding.1.weight``, ...,
``transformer.layers.0.0.to_qkv.weight``, ``mlp_head.bias``) and a state_dict saved by the
seed loads into it and into :func:`jaxgrad.port.vit_convert.load_torch_state_dict`.

torch is imported inside :func:`build`, so importing this module never needs torch.

    from experiments._support.torch_vit import build
    model = build(image_size=32, patch_size=4, num_classes=10, dim=512, depth=6, heads=8,
                  mlp_dim=1024, dropout=0.1, emb_dropout=0.1)   # images [B, C, H, W]
"""

from __future__ import annotations

__all__ = ["VIT_ARGS", "build", "from_vit_config"]


def _classes():
    import torch
    from torch import nn

    class FeedForward(nn.Module):
        def __init__(self, dim, hidden_dim, dropout=0.0):
            super().__init__()
            self.net = nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, dim),
                nn.Dropout(dropout),
            )

        def forward(self, x):
            return self.net(x)

    class Attention(nn.Module):
        def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
            super().__init__()
            inner_dim = dim_head * heads
            project_out = not (heads == 1 and dim_head == dim)
            self.heads = heads
            self.scale = dim_head**-0.5
            self.norm = nn.LayerNorm(dim)
            self.attend = nn.Softmax(dim=-1)
            self.dropout = nn.Dropout(dropout)
            self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
            self.to_out = (
                nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout))
                if project_out
                else nn.Identity()
            )

        def forward(self, x):
            x = self.norm(x)
            qkv = self.to_qkv(x).chunk(3, dim=-1)
            # rearrange(t, 'b n (h d) -> b h n d', h=heads)
            b, n, _ = x.shape
            q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in qkv)
            dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            attn = self.attend(dots)
            attn = self.dropout(attn)
            out = torch.matmul(attn, v)
            out = out.transpose(1, 2).reshape(b, n, -1)  # 'b h n d -> b n (h d)'
            return self.to_out(out)

    class Transformer(nn.Module):
        def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout=0.0):
            super().__init__()
            self.norm = nn.LayerNorm(dim)
            self.layers = nn.ModuleList([])
            for _ in range(depth):
                attn = Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout)
                ff = FeedForward(dim, mlp_dim, dropout=dropout)
                self.layers.append(nn.ModuleList([attn, ff]))

        def forward(self, x):
            for attn, ff in self.layers:
                x = attn(x) + x
                x = ff(x) + x
            return self.norm(x)

    class ToPatches(nn.Module):
        """einops ``Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')``, no parameters."""

        def __init__(self, p1, p2):
            super().__init__()
            self.p1, self.p2 = p1, p2

        def forward(self, img):
            b, c, hh, ww = img.shape
            h, w = hh // self.p1, ww // self.p2
            x = img.reshape(b, c, h, self.p1, w, self.p2)
            x = x.permute(0, 2, 4, 3, 5, 1)  # b h w p1 p2 c
            return x.reshape(b, h * w, self.p1 * self.p2 * c)

    class ViT(nn.Module):
        def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads,
                     mlp_dim, channels=3, dim_head=64, dropout=0.0, emb_dropout=0.0,
                     pool="cls"):  # fmt: skip
            super().__init__()
            assert image_size % patch_size == 0, "Image dimensions must be divisible by patch"
            assert pool in {"cls", "mean"}, "pool type must be either cls or mean"
            self.pool = pool
            num_patches = (image_size // patch_size) ** 2
            patch_dim = channels * patch_size * patch_size
            self.to_patch_embedding = nn.Sequential(
                ToPatches(patch_size, patch_size),
                nn.LayerNorm(patch_dim),
                nn.Linear(patch_dim, dim),
                nn.LayerNorm(dim),
            )
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
            self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
            self.dropout = nn.Dropout(emb_dropout)
            self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
            self.to_latent = nn.Identity()
            self.mlp_head = nn.Linear(dim, num_classes)

        def forward(self, img):
            x = self.to_patch_embedding(img)
            b, n, _ = x.shape
            cls_tokens = self.cls_token.expand(b, -1, -1)
            x = torch.cat((cls_tokens, x), dim=1)
            x += self.pos_embedding[:, : (n + 1)]
            x = self.dropout(x)
            x = self.transformer(x)
            x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
            x = self.to_latent(x)
            return self.mlp_head(x)

    return ViT


def build(**kwargs):
    """``vit_pytorch.ViT(**kwargs)``: a torch ``nn.Module`` taking ``[B, C, H, W]``."""
    return _classes()(**kwargs)


#: the ViTConfig fields that are vit-pytorch ``ViT`` arguments of the same name
VIT_ARGS = ("image_size", "patch_size", "num_classes", "dim", "depth", "heads", "mlp_dim",
            "channels", "dim_head", "dropout", "emb_dropout", "pool")  # fmt: skip


def from_vit_config(cfg):
    """The torch twin of a :class:`jaxgrad.models.vit.ViTConfig` (float32 always)."""
    return build(**{name: getattr(cfg, name) for name in VIT_ARGS})
