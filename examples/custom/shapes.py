"""Your own data set: any callable ``(root) -> (train, test)``; here generated tensors, no files.

Named in the config as ``data.name: "examples.custom.shapes:load"``. Each split is ``(images, labels)``:
uint8 (or float in [0, 1]) images ``[N, C, H, W]`` and integer labels. The images are 16x16 greyscale
drawings of four shapes (bar, column, box, cross) at random positions and sizes with pixel noise, so a
small CNN has something real to learn; the generator is seeded, so every peer builds the same set.
"""

from __future__ import annotations

from pathlib import Path

import torch

SIZE = 16
CLASSES = ("bar", "column", "box", "cross")


def _draw(kind: int, g: torch.Generator) -> torch.Tensor:
    img = torch.zeros(SIZE, SIZE)
    n = int(torch.randint(5, 11, (1,), generator=g))
    r, c = (int(v) for v in torch.randint(0, SIZE - n + 1, (2,), generator=g))
    mid_r, mid_c = r + n // 2, c + n // 2
    if kind == 0:
        img[mid_r, c:c + n] = 1.0
    elif kind == 1:
        img[r:r + n, mid_c] = 1.0
    elif kind == 2:
        img[r, c:c + n] = img[r + n - 1, c:c + n] = 1.0
        img[r:r + n, c] = img[r:r + n, c + n - 1] = 1.0
    else:
        img[mid_r, c:c + n] = img[r:r + n, mid_c] = 1.0
    noise = torch.rand(SIZE, SIZE, generator=g) * 0.35
    return (img * 0.65 + noise).clamp_(0, 1)


def make(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    images = torch.stack([_draw(int(k), g) for k in labels])[:, None]   # [N, 1, 16, 16] floats in [0, 1]
    return images, labels


def load(root: Path) -> dict[str, object]:
    """``root`` (data.root / $GOSSIP_DATA) is unused: the set is generated."""
    return {"train": make(4000, seed=1), "test": make(1000, seed=2), "num_classes": len(CLASSES)}
