"""scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) as an ImageSet.

The fast real dataset: it ships inside scikit-learn (no download), trains in seconds on a CPU, and is
the home of the InfoGAN family. Labels are one-hot, so the same code paths serve it as i-CLEVR.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from trainers.data.errors import DataError
from trainers.data.imageset import ImageSet

DIGIT_SIZES = (8, 16, 32, 64)


def load_digits(*, size: int = 32) -> ImageSet:
    """Digits upsampled (bilinear) to size x size, gray replicated to RGB, white strokes on black."""
    if size not in DIGIT_SIZES:
        raise DataError(f"digits: size {size} not supported (valid: {', '.join(map(str, DIGIT_SIZES))})")
    from sklearn.datasets import load_digits as sk_load_digits  # lazy: only the digits track needs it

    raw = sk_load_digits()
    # Pixel values are 0..16 ink counts; scale to the full uint8 range.
    small = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    images = np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in small]
    )
    images = np.repeat(images[..., None], 3, axis=-1)  # (N, size, size, 3)
    labels = np.eye(10, dtype=np.float32)[raw.target]
    fingerprint = hashlib.sha256(small.tobytes() + raw.target.tobytes() + f"digits:{size}".encode())
    return ImageSet(
        images=np.ascontiguousarray(images),
        labels=labels,
        files=tuple(f"digits_{i:04d}" for i in range(len(small))),
        classes=tuple(str(d) for d in range(10)),
        fingerprint=fingerprint.hexdigest()[:16],
        name="digits",
    )
