"""Fitting an evaluator on a labeled image set, with a held-out split that keeps each scene on one side."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from trainers.evaluator.metrics import per_class_f1, topk_accuracy
from trainers.evaluator.model import Evaluator, ResNet18, default_device
from trainers.evaluator.recipe import FitConfig  # torch-free, for the command line's --help

SCENE_FILE = re.compile(r"^CLEVR_\w+?_(\d+)_\d+\.png$")  # CLEVR_train_001032_2.png: scene 001032, 3rd object


def split_indices(
    files: Sequence[str] | None, n: int, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """(train indices, held-out indices, "scene" | "image").

    When every file looks like CLEVR_train_NNNNNN_k.png the split is by scene, so the 1-, 2- and 3-object
    views of one scene never straddle it (that would leak the scene into the held-out score).
    """
    rng = np.random.default_rng(seed)
    names = [os.path.basename(f) for f in files] if files is not None else []
    matches = [SCENE_FILE.match(f) for f in names]
    if files is not None and len(names) == n and n > 0 and all(matches):
        scenes = np.array([m.group(1) for m in matches])
        unique = rng.permutation(np.unique(scenes))
        n_val = max(1, round(len(unique) * val_fraction))
        held = np.isin(scenes, unique[:n_val])
        return np.flatnonzero(~held), np.flatnonzero(held), "scene"
    order = rng.permutation(n)
    n_val = max(1, round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val]), "image"


def augment(x: Tensor, *, max_shift: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random integer translation (edge pixels repeat) and horizontal flip of a (B, 3, H, W) batch, one grid_sample."""
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3)
    sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta[:, 0, 0] = sign
    theta[:, 1, 1] = 1.0
    shift = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator).float()
    theta[:, 0, 2] = (
        2 * shift[:, 0] / w
    )  # whole pixels in normalized coordinates: nearest sampling stays exact
    theta[:, 1, 2] = 2 * shift[:, 1] / h
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def _to_float(x_uint8: Tensor) -> Tensor:
    return x_uint8.float().div_(127.5).sub_(1.0)  # uint8 (B, 3, H, W) -> [-1, 1]


def fit(
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    *,
    files: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    config: FitConfig = FitConfig(),  # noqa: B008 (a frozen dataclass: one shared default is safe)
    device: str | torch.device | None = None,
    progress: bool = True,
    init: Evaluator | None = None,
) -> tuple[Evaluator, dict[str, Any]]:
    """Train a ResNet18 evaluator on uint8 (N, H, W, 3) images and (N, C) multi-hot labels.

    `init` warm-starts from an evaluator's weights (same width and classes) instead of a fresh network:
    the way to add freshly rendered scenes to a judge without paying for its first fit again. Its
    held-out split must be scenes it never trained on, i.e. a dataset rendered with another seed.
    Returns the evaluator (eval mode) and a report: held-out top-k accuracy, per-class F1, sizes, timings.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    x_all = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # uint8 (N, 3, H, W)
    y_all = torch.as_tensor(labels, dtype=torch.float32)
    if x_all.dtype != torch.uint8 or x_all.shape[1] != 3 or y_all.dim() != 2 or len(y_all) != len(x_all):
        raise ValueError(
            f"need uint8 images (N, H, W, 3) and labels (N, C); got {tuple(images.shape)}, {tuple(y_all.shape)}"
        )
    train_idx, val_idx, split = split_indices(
        files, len(x_all), val_fraction=config.val_fraction, seed=config.seed
    )
    if config.max_train is not None and len(train_idx) > config.max_train:
        train_idx = np.sort(
            np.random.default_rng(config.seed + 1).choice(train_idx, config.max_train, replace=False)
        )
    train_idx, val_idx = torch.as_tensor(train_idx), torch.as_tensor(val_idx)

    net = ResNet18(n_classes=y_all.shape[1], width=config.width)
    if init is not None:
        if (init.width, init.n_classes) != (config.width, net.fc[0].out_features):
            raise ValueError(
                f"init evaluator is width {init.width} with {init.n_classes} classes; "
                f"this fit is width {config.width} with {net.fc[0].out_features}"
            )
        net.load_state_dict({k: v.detach().cpu().contiguous() for k, v in init.net.state_dict().items()})
    ev = Evaluator(net, classes=classes, device=device)  # ev.prepare() resizes exactly as scoring will
    net = ev.net
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    bs = min(config.batch_size, len(train_idx))
    steps = len(train_idx) // bs  # drop the ragged last batch: a batch of 1 breaks BatchNorm
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.epochs * steps, pct_start=0.2
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    history = []
    for epoch in range(config.epochs):
        net.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        batch_accs = []
        bar = tqdm(
            range(steps),
            desc=f"evaluator epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=True,
        )
        for step in bar:
            idx = perm[step * bs : (step + 1) * bs]
            x = ev.prepare(_to_float(x_all[idx]))
            if config.max_shift or config.flip:
                x = augment(x, max_shift=config.max_shift, flip=config.flip, generator=gen)
                x = x.contiguous(memory_format=torch.channels_last)  # grid_sample returns NCHW
            y = y_all[idx].to(device)
            # minimize BCE(sigmoid(logits), y): the fc's Sigmoid is folded into the loss for stability
            with autocast:
                logits = net.fc[0](net.features(x))
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 20 == 0 or step == steps - 1:  # reading the loss syncs the device: only at log time
                batch_accs.append(topk_accuracy(logits.detach(), y))
                bar.set_postfix(loss=f"{loss.item():.4f}", acc=f"{batch_accs[-1]:.3f}")
        net.eval()
        val_probs = ev.scores(_to_float(x_all[val_idx]))
        val_acc = topk_accuracy(val_probs, y_all[val_idx])
        history.append(
            {
                "epoch": epoch + 1,
                "loss": loss.item(),
                "train_acc": float(np.mean(batch_accs)),
                "heldout_acc": val_acc,
            }
        )
        if progress:
            tqdm.write(f"evaluator epoch {epoch + 1}/{config.epochs}: held-out top-k acc {val_acc:.4f}")
    net.eval()
    f1 = per_class_f1(val_probs, y_all[val_idx])
    report = {
        "heldout_acc": val_acc,
        "per_class_f1": dict(zip(ev.classes, f1, strict=True)),
        "macro_f1": float(np.mean(f1)),
        "epochs": config.epochs,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "split": split,
        "train_seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),  # all threads: comparable under shared CPUs
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "config": asdict(config),
        "history": history,
    }
    return ev, report
