"""A small vision transformer, trained by its own loop and compressed by nnshrink.

    python -m examples.tiny_vit [--epochs 10] [--subset N] [--out runs/tiny_vit]
"""

from __future__ import annotations

import torch
import torch.nn as nn

from examples.common import Example


class TinyViT(nn.Module):
    """Patches (a strided conv) + class token + learned positions -> pre-norm encoder -> head."""

    def __init__(self, patch: int = 4, dim: int = 96, depth: int = 4, heads: int = 4, mlp: int = 192,
                 classes: int = 10, image: int = 28):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, patch, patch)
        tokens = (image // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.encoder(x)[:, 0]))


def build() -> nn.Module:
    return TinyViT(patch=7)


RECIPE = """
stages = ["prune", "share", "encode"]
"""

EXAMPLE = Example("tiny_vit", build, epochs=12, lr=1e-3, weight_decay=0.05, finetune_lr=2e-4, recipe=RECIPE)
