"""What the trainer tests share: tiny network sizes and random image sets, so every combination runs in
milliseconds on one CPU thread. Module-level helpers rather than fixtures so parametrize ids can use them."""

from __future__ import annotations

import numpy as np

N_CLASSES = 5

# Smallest sizes every architecture accepts: attention at 8x8 (sagan), 3 discrete and 1 continuous code
# (infogan). Batch 2 is the smallest batch batch-norm and the gradient penalty's interpolation accept.
TINY = {
    "width": 4,
    "z_dim": 8,
    "embed_dim": 4,
    "attn_res": 8,
    "batch_size": 2,
    "disc_codes": 3,
    "cont_codes": 1,
}


def random_set(n: int = 12, size: int = 16, *, one_hot: bool = False, seed: int = 0):
    """An ImageSet of uniform noise with N_CLASSES classes: multi-hot labels (~30% on), or one class each."""
    from trainers.data import ImageSet

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    if one_hot:
        labels = np.eye(N_CLASSES, dtype=np.float32)[rng.integers(0, N_CLASSES, n)]
    else:
        labels = (rng.random((n, N_CLASSES)) < 0.3).astype(np.float32)
    return ImageSet(
        images=images,
        labels=labels,
        files=tuple(f"f{i}.png" for i in range(n)),
        classes=tuple(f"c{i}" for i in range(N_CLASSES)),
        fingerprint="fp",
    )
