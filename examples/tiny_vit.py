"""A small vision transformer, trained by its own loop and compressed by nnshrink.

    python -m examples.tiny_vit [--epochs 12] [--subset N] [--out runs/tiny_vit]

7x7 patches (a strided conv) of a 28x28 image, a class token and learned positions, four
pre-norm ``nn.TransformerEncoderLayer`` (``nn.MultiheadAttention`` + MLP, LayerNorm), a
linear head. nnshrink knows nothing of it: the example trains it with its own AdamW loop
(``examples/common.py``), hands that loop and its top-1 metric to ``nnshrink.compress``,
saves the archive, loads it into a freshly built model with ``nnshrink.load(path,
model=build())`` and measures the loaded model. The float model is cached in
``OUT/base.safetensors``.

Why this recipe (``RECIPE``): the target is 15x by file size (~82 KB). About 25 KB go to
what stays as it is: the archive header (56 records) and the biases, LayerNorm vectors,
positions and class token (float16 via ``half_dense``). The attention input projections
(``in_proj_weight``, a parameter of ``nn.MultiheadAttention``, not a module's weight) are
compressed like every other matrix: the encoder's matrices keep 15% of their weights,
the MLP and output projections share 4-bit centroids, the input projections (q, k and v
in one matrix, the most sensitive) 5-bit ones. The patch embedding and the head are small
and closest to the data: they keep 50% and 40%. Three prune rounds of rising sparsity:
one epoch of retraining after each of the first two, four after the last (a transformer
recovers more slowly than the CNN), then one epoch of centroid fine-tuning, all with the
example's own loop at half the training lr. (With one epoch after every round and a fifth
of the lr, the archive lost 1.9 points; benchmarks/own_models.py, first run.)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from examples import common
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
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.encoder(x)[:, 0]))


def build() -> nn.Module:
    return TinyViT(patch=7)


RECIPE = """
stages = ["prune", "share", "encode"]
[prune]
sparsity = 0.85
rounds = 3
retrain_epochs = 1
final_epochs = 4
[prune.layers]
patch = 0.5
head = 0.6
[share]
conv_bits = 5
fc_bits = 4
finetune_epochs = 1
[share.layers]
attention = 5
[encode]
half_dense = true
"""

EXAMPLE = Example("tiny_vit", build, epochs=12, lr=1e-3, weight_decay=0.05, finetune_lr=5e-4, recipe=RECIPE)


def loaders():
    """(train, test) DataLoaders over Fashion-MNIST: the CLI's --data-factory."""
    return common.loaders()


def main(argv: list[str] | None = None) -> dict:
    return common.run(EXAMPLE, argv)


if __name__ == "__main__":
    main()
