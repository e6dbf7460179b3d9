"""The one in-memory form every dataset takes, and its device-resident twin for training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch costs ~2.5 s to import: the data CLI and render workers never need it
    import torch


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A labeled image set at one resolution.

    images: uint8 (N, H, W, 3); labels: float32 (N, C) multi-hot; files and classes name rows and columns;
    fingerprint: hash of the inputs and the resize settings (what a checkpoint or evaluator was built from).
    """

    images: np.ndarray
    labels: np.ndarray
    files: tuple[str, ...]
    classes: tuple[str, ...]
    fingerprint: str
    name: str = ""

    def __post_init__(self) -> None:
        n = len(self.files)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (n, len(self.classes)) or self.images.shape[0] != n:
            raise ValueError(
                f"{n} files, images {self.images.shape}, labels {self.labels.shape}, {len(self.classes)} classes"
            )

    def __len__(self) -> int:
        return len(self.files)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]: the generator's output range and the
    evaluator's input after its mean = std = 0.5 normalization."""
    import torch

    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class DeviceData:
    """An ImageSet held as one tensor on the training device; batches are sampled by index.

    Why not a DataLoader: the whole packed set fits in memory (18k x 64x64x3 = 221 MB), and indexing a
    resident tensor costs microseconds where worker processes cost a copy and a sync per batch.
    """

    def __init__(self, data: ImageSet, device: str | torch.device = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2).to(self.device)
        self.labels = torch.from_numpy(data.labels).to(self.device)  # (N, C)
        self.classes = data.classes
        self.fingerprint = data.fingerprint

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch drawn uniformly with replacement: x float (B, 3, H, W) in [-1, 1], y float (B, C).

        The indices come from `generator` on the CPU whatever device the data is on, so the batch order (and
        a checkpoint's sampler state) is the same on every device: a run checkpointed on a GPU resumes on the
        CPU, or the reverse. The copy is non-blocking (the driver stages the few bytes): no host sync."""
        import torch

        idx = torch.randint(len(self), (batch_size,), generator=generator)
        idx = idx.to(self.device, non_blocking=True)
        return self.images[idx].float().div_(127.5).sub_(1.0), self.labels[idx]
