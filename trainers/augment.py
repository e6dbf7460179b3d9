"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to every image D sees.

Ported from mit-han-lab/data-efficient-gans (DiffAugment_pytorch.py, BSD-2-Clause). Applying the same
random transforms to real and fake batches, in D's and G's updates alike, keeps D from memorising a small
training set without leaking the augmentations into G's output distribution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers import choices
from trainers.registry import implements


def _brightness(x: Tensor) -> Tensor:
    return x + (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def _saturation(x: Tensor) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean


def _contrast(x: Tensor) -> Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def _grid(x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    return torch.meshgrid(
        torch.arange(x.size(0), device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )


def _translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift by up to 1/8 of the image size, padding with zeros."""
    sh, sw = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    tx = torch.randint(-sh, sh + 1, size=[x.size(0), 1, 1], device=x.device)
    ty = torch.randint(-sw, sw + 1, size=[x.size(0), 1, 1], device=x.device)
    gb, gx, gy = _grid(x, x.size(2), x.size(3))
    gx = torch.clamp(gx + tx + 1, 0, x.size(2) + 1)
    gy = torch.clamp(gy + ty + 1, 0, x.size(3) + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # (B, C, H + 2, W + 2); the border is the zero fill
    return padded.permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2)  # (B, C, H, W)


def _cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero one random square of half the image size."""
    ch, cw = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    ox = torch.randint(0, x.size(2) + (1 - ch % 2), size=[x.size(0), 1, 1], device=x.device)
    oy = torch.randint(0, x.size(3) + (1 - cw % 2), size=[x.size(0), 1, 1], device=x.device)
    gb, gx, gy = _grid(x, ch, cw)
    gx = torch.clamp(gx + ox - ch // 2, min=0, max=x.size(2) - 1)
    gy = torch.clamp(gy + oy - cw // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)  # (B, C, H, W)


# Policy name (declared in trainers.choices.AUGMENTS, which the config checks) -> its transforms, in order.
AUGMENTS: dict[str, tuple[Callable[[Tensor], Tensor], ...]] = implements(
    choices.AUGMENTS,
    {
        "color": (_brightness, _saturation, _contrast),
        "translation": (_translation,),
        "cutout": (_cutout,),
    },
    axis="diffaug policy",
)


def random_hflip(x: Tensor) -> Tensor:
    """Mirror each image of a (B, C, H, W) batch left-right with probability 1/2 (torch's global RNG on x's
    device, so a seed fixes it and a checkpoint's RNG state resumes it; no host sync). Only for data whose
    labels have no left or right (i-CLEVR's colour+shape names): a mirrored digit is another glyph."""
    mirror = torch.rand(x.size(0), 1, 1, 1, device=x.device) < 0.5
    return torch.where(mirror, x.flip(-1), x)


def diff_augment(x: Tensor, policy: tuple[str, ...]) -> Tensor:
    """x with each transform of `policy` (names as `trainers.choices.parse_policy` returns them) applied."""
    for name in policy:
        for fn in AUGMENTS[name]:
            x = fn(x)
    return x
