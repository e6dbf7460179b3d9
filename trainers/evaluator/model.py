"""The evaluator network (torchvision ResNet18 at any width), its checkpoint format and its guard."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1

from trainers.evaluator.metrics import topk_accuracy
from trainers.files import atomic_write

RESOLUTION = 64  # the official evaluator was trained on (upsampled) 64x64 images
OFFICIAL_WIDTH = 64  # torchvision resnet18's stem width; layers are width, 2w, 4w, 8w


class EvaluatorError(ValueError):
    """A checkpoint or sidecar that cannot be used; str() is one line naming the file and the problem."""


class ResNet18(nn.Module):
    """torchvision ``resnet18`` with ``fc = Sequential(Linear(8 * width, n_classes), Sigmoid())``.

    At width 64 the modules, state_dict keys and shapes, init and forward are exactly torchvision's, so the
    official checkpoint loads with no renaming; smaller widths (8, 16) are the same code for fast CPU use.
    """

    def __init__(self, *, n_classes: int, width: int = OFFICIAL_WIDTH):
        super().__init__()
        self.width = width
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, stride=1)
        self.layer2 = self._make_layer(2 * width, stride=2)
        self.layer3 = self._make_layer(4 * width, stride=2)
        self.layer4 = self._make_layer(8 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Sequential(nn.Linear(8 * width, n_classes), nn.Sigmoid())
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, *, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        blocks = [BasicBlock(self.inplanes, planes, stride, downsample), BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*blocks)

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, 64, 64) normalized input -> (B, 8 * width) penultimate features (after avgpool)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def as_model_input(images: Tensor | np.ndarray) -> Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]; float (N, 3, H, W) passes through."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (N, 3, H, W)
    if not x.is_floating_point() or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"images must be float (N, 3, H, W) in [-1, 1] or uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}"
        )
    return x


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.json")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Evaluator:
    """A ResNet18 judge on a device: scores, penultimate features and the official accuracy.

    Inputs are (B, 3, H, W) float images in [-1, 1]: with mean = std = 0.5 that IS the official normalized
    input. Images that are not 64x64 are resized bilinearly first, as the official evaluator saw them.
    """

    def __init__(
        self,
        net: ResNet18,
        *,
        classes: Sequence[str] | None = None,
        meta: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        # channels_last on every device: cuDNN's fast path, and ~17% more images per CPU-second in oneDNN
        # (width 32, 64x64, 1 thread: 238 vs 204 img/s training, 2026-12-01). save() writes contiguous copies.
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)
        n_classes = net.fc[0].out_features
        self.classes = tuple(classes) if classes is not None else tuple(str(i) for i in range(n_classes))
        if len(self.classes) != n_classes:
            raise ValueError(f"{len(self.classes)} class names for {n_classes} outputs")
        self.meta = dict(meta or {})
        self._real_cache: tuple[Any, ...] | None = None  # (weakref to real, version, stats), see protocol

    @property
    def width(self) -> int:
        return self.net.width

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    # -- checkpoints ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device | None = None) -> Evaluator:
        """Load an official ``{"model": state_dict}`` checkpoint, or a project one with its PATH.json sidecar."""
        path = Path(path)
        if not path.is_file():
            raise EvaluatorError(f"{path}: no such checkpoint file")
        meta = read_sidecar(path) if sidecar_path(path).is_file() else {}
        return cls.from_bytes(path.read_bytes(), meta=meta, name=str(path), device=device)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        meta: Mapping[str, Any] | None = None,
        name: str = "evaluator bytes",
        device: str | torch.device | None = None,
    ) -> Evaluator:
        """The evaluator in `data` (a checkpoint file's bytes, e.g. shipped to a trial through Ray's object
        store), with every check `load` makes: readable weights-only, the official format, resnet18's keys and
        shapes, and a sidecar `meta` that agrees with the weights. `name` stands for the file in messages."""
        try:
            with warnings.catch_warnings():  # the one line below says it all; no warning around it
                warnings.simplefilter("ignore")
                ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and weights_only errors all mean "not a checkpoint we can read"
            raise _unreadable(name, data[:4], e) from None
        if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
            raise EvaluatorError(f'{name}: expected the official format {{"model": state_dict}}')
        state = ckpt["model"]
        try:
            width, n_classes = int(state["conv1.weight"].shape[0]), int(state["fc.0.weight"].shape[0])
        except (KeyError, AttributeError, IndexError):
            raise EvaluatorError(
                f"{name}: not a resnet18 with fc = Sequential(Linear, Sigmoid) (no conv1.weight / fc.0.weight)"
            ) from None
        net = ResNet18(n_classes=n_classes, width=width)
        _check_state(name, net.state_dict(), state)
        net.load_state_dict(state)
        meta = dict(meta or {})
        for key, have in (("n_classes", n_classes), ("width", width)):
            if key in meta and meta[key] != have:
                raise EvaluatorError(f"{name}: sidecar says {key}={meta[key]}, checkpoint has {have}")
        return cls(net, classes=meta.get("classes"), meta=meta, device=device)

    def save(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
        """Write the official-format checkpoint, then its sidecar (with the checkpoint's sha256), atomically."""
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        atomic_write(path, lambda tmp: torch.save({"model": state}, tmp))
        self.meta = {
            **(meta or self.meta),
            "n_classes": self.n_classes,
            "classes": list(self.classes),
            "width": self.width,
            "resolution": RESOLUTION,
            "checkpoint_sha256": file_sha256(path),
        }
        text = json.dumps(self.meta, indent=2) + "\n"
        atomic_write(sidecar_path(path), lambda tmp: Path(tmp).write_text(text))
        return path

    # -- scoring --------------------------------------------------------------------------------------
    def prepare(self, images: Tensor) -> Tensor:
        """Float (B, 3, H, W) in [-1, 1] on any device -> (B, 3, 64, 64) on the evaluator's device."""
        if (
            not torch.is_tensor(images)
            or not images.is_floating_point()
            or images.dim() != 4
            or images.shape[1] != 3
        ):
            desc = (
                f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
            )
            raise ValueError(f"images must be a float (B, 3, H, W) tensor in [-1, 1], got {desc}")
        x = images.to(self.device, torch.float32, non_blocking=True)
        if x.shape[-2:] != (RESOLUTION, RESOLUTION):
            # antialias only matters when shrinking; upsampling is plain bilinear
            x = F.interpolate(
                x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False, antialias=True
            )
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def scores_and_features(self, images: Tensor, *, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """One forward pass in chunks -> (probabilities (B, C), features (B, 8 * width)), float32 on CPU.

        Always the official fp32 computation, on every device and whatever autocast the caller is under:
        in bf16, sigmoid outputs of logits above ~6.3 all round to 1.0, the top-k ties then fall back to
        class order, and the accuracy that drives ASHA, the leaderboard and the floor would differ between
        the CPU and a GPU. bf16 is for training only."""
        probs, feats = [], []
        for chunk in images.split(batch_size):
            with _fp32(self.device):
                f = self.net.features(self.prepare(chunk))
                p = self.net.fc(f)
            probs.append(p.float().cpu())
            feats.append(f.float().cpu())
        return torch.cat(probs), torch.cat(feats)

    def scores(self, images: Tensor, *, batch_size: int = 256) -> Tensor:
        return self.scores_and_features(images, batch_size=batch_size)[0]

    def features(self, images: Tensor, *, batch_size: int = 256) -> Tensor:
        return self.scores_and_features(images, batch_size=batch_size)[1]

    def accuracy(self, images: Tensor, labels: Tensor | np.ndarray, *, batch_size: int = 256) -> float:
        """The official top-k accuracy of these images against their multi-hot labels (one batch)."""
        return topk_accuracy(self.scores(images, batch_size=batch_size), labels)


@contextlib.contextmanager
def _fp32(device: torch.device):
    """Autocast off for every device type (an enclosing CPU or CUDA autocast included), and on CUDA no TF32
    in convolutions (cuDNN's default) or matmuls: plain IEEE fp32, the computation the CPU does."""
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        if device.type != "cuda":
            yield
            return
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
TORCH_ZIP, PICKLE = b"PK\x03\x04", b"\x80"  # torch.save's zip archive; the legacy format's pickle header


def _unreadable(path: str, head: bytes, err: Exception) -> EvaluatorError:
    """One line for a file (its first 4 bytes: `head`) torch.load(weights_only=True) refused, instead of
    torch's many-line message."""
    if not head:
        return EvaluatorError(f"{path}: empty file, not a torch checkpoint")
    if not (head.startswith(TORCH_ZIP) or head.startswith(PICKLE)):
        return EvaluatorError(
            f"{path}: not a torch checkpoint (torch.save writes a zip archive; this file starts with {head!r}); "
            'the official format is torch.save({"model": state_dict})'
        )
    found = UNSAFE_GLOBAL.search(str(err))
    if isinstance(err, pickle.UnpicklingError) and found:
        return EvaluatorError(
            f"{path}: holds pickled Python objects (it needs {found.group(1)}), not only tensors, so the safe "
            "weights-only loader refuses it; where you trust it, save the weights alone: "
            'torch.save({"model": model.state_dict()}, PATH)'
        )
    return EvaluatorError(f"{path}: a torch checkpoint that cannot be read: corrupt or truncated")


def _check_state(path: str, expected: Mapping[str, Tensor], got: Mapping[str, Any]) -> None:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if missing or unexpected:
        raise EvaluatorError(
            f"{path}: state_dict keys do not match resnet18 + fc Sequential(Linear, Sigmoid) "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for k, v in expected.items():
        shape = tuple(getattr(got[k], "shape", ()))
        if shape != tuple(v.shape):
            raise EvaluatorError(
                f"{path}: shape mismatch at {k}: checkpoint {shape}, expected {tuple(v.shape)}"
            )


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        raise EvaluatorError(f"{side}: missing sidecar (fit one with `python -m trainers.evaluator fit`)")
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvaluatorError(f"{side}: unreadable sidecar ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise EvaluatorError(f"{side}: sidecar is not a JSON object")
    return meta


def check_evaluator(
    path: str | os.PathLike, *, data_fingerprint: str | None, floor: float = 0.9
) -> dict[str, Any]:
    """The search's guard: raise EvaluatorError unless PATH's sidecar shows a trustworthy judge for this data.

    Checks, in order: checkpoint and sidecar exist, the sidecar describes this checkpoint (sha256), its held-out
    accuracy is >= floor, and (when ``data_fingerprint`` is given) it was fitted on this data. Returns the sidecar.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluatorError(f"{path}: no such checkpoint file")
    meta = read_sidecar(path)
    side = sidecar_path(path)
    sha = meta.get("checkpoint_sha256")
    if sha is not None and sha != file_sha256(path):
        raise EvaluatorError(
            f"{side}: sidecar describes another checkpoint (sha256 mismatch with {path.name})"
        )
    acc = meta.get("heldout_acc")
    if not isinstance(acc, (int, float)):
        raise EvaluatorError(f"{side}: no held-out accuracy recorded (heldout_acc)")
    if not acc >= floor:
        raise EvaluatorError(f"{side}: held-out accuracy {acc:.4f} is below the floor {floor:.4f}")
    if data_fingerprint is not None and meta.get("data_fingerprint") != data_fingerprint:
        raise EvaluatorError(
            f"{side}: data fingerprint mismatch: evaluator fitted on {meta.get('data_fingerprint')}, "
            f"dataset is {data_fingerprint}"
        )
    return meta
