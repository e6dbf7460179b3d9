"""The project's training step vs a bare PyTorch loop of the same networks, batch and data, in one run.

    nice python bench/train_step.py [--preset dcgan_bce] [--size 32] [--width 32] [--batch 64] [--device cpu]

Both loops use the same G and D modules (built by the project's builders, so the arithmetic is identical),
the same optimizers, and batches indexed from the same device-resident uint8 tensor. The bare loop is the
algorithm hand-written with nothing around it: no registries, no loss accumulation, no hooks. Rounds
alternate between the two so that drift in a shared machine's load hits both; the ratio is of medians of
per-step process time on the CPU (robust to other tenants of a shared machine), wall time on a GPU.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from trainers.config import load_preset
from trainers.step import GAN, build_gan, train_step


def bare_step(
    gan: GAN, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, batch: int, z_dim: int
):
    """pytorch/examples' DCGAN loop with labels, written out: one D step (BCE on real and fake), one G step
    (non-saturating), D frozen during G's backward exactly as the project's step does."""
    G, D, opt_g, opt_d, dev = gan.G, gan.D, gan.opt_g, gan.opt_d, gan.device
    idx = torch.randint(len(images), (batch,), generator=gen, device=gen.device).to(dev)
    real, y = images[idx].float().div_(127.5).sub_(1.0), labels[idx]
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        with torch.no_grad():
            fake = G(torch.randn(batch, z_dim, device=dev), y)
        loss_d = F.softplus(-D(real, y).logits).mean() + F.softplus(D(fake, y).logits).mean()
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    D.requires_grad_(False)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        loss_g = F.softplus(-D(G(torch.randn(batch, z_dim, device=dev), y), y).logits).mean()
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    D.requires_grad_(True)


class _Data:
    """The DeviceData contract over a resident uint8 tensor (what trainers.data.DeviceData does)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, batch_size: int, generator: torch.Generator):
        idx = torch.randint(len(self), (batch_size,), generator=generator, device=generator.device).to(
            self.images.device
        )
        return self.images[idx].float().div_(127.5).sub_(1.0), self.labels[idx]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="dcgan_bce", help="a preset with a BCE-family loss and n_critic 1")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="steps per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--threads", type=int, default=1, help="1 on a shared CPU: idle OpenMP threads spin otherwise"
    )
    p.add_argument(
        "--data", default="digits", help="'digits' or a dataset folder / .parquet (loaded at --size)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from trainers.data import load_dataset

    config = load_preset(args.preset).replace(width=args.width, batch_size=args.batch)
    if config.loss not in ("bce", "nonsat") or config.n_critic != 1 or config.ema or config.diffaug:
        raise SystemExit("the bare loop is a BCE-family, n_critic 1 loop without EMA or DiffAugment")
    device = torch.device(args.device)
    ds = load_dataset(args.data, size=args.size, progress=False)
    images = torch.from_numpy(ds.images).permute(0, 3, 1, 2).contiguous().to(device)  # uint8 (N, 3, H, W)
    labels = torch.from_numpy(ds.labels).to(device)
    data = _Data(images, labels)

    torch.manual_seed(0)
    gan = build_gan(config, image_size=args.size, n_classes=labels.shape[1], device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def project() -> None:
        for _ in range(args.steps):
            train_step(gan, data, gen)
        gan.read_losses()  # the one sync a real run pays per log interval

    def bare() -> None:
        for _ in range(args.steps):
            bare_step(gan, images, labels, gen, args.batch, config.z_dim)

    for fn in (project, bare):  # warm-up: allocator, autotuning, first-call overheads
        fn()
    wall: dict[str, list[float]] = {"project": [], "bare": []}
    cpu: dict[str, list[float]] = {"project": [], "bare": []}
    for r in range(args.rounds):
        order = (
            (("project", project), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("project", project))
        )
        for name, fn in order:
            sync()
            t, c = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[name].append((time.perf_counter() - t) / args.steps)
            cpu[name].append((time.process_time() - c) / args.steps)
    w = {k: statistics.median(v) for k, v in wall.items()}
    c = {k: statistics.median(v) for k, v in cpu.items()}
    # On a shared CPU, process time (what this process ran) is robust to other tenants; wall time is not.
    primary = c if device.type == "cpu" else w
    print(
        json.dumps(
            {
                "preset": args.preset,
                "device": str(device),
                "size": args.size,
                "width": args.width,
                "batch": args.batch,
                "threads": torch.get_num_threads(),
                "project_ms": round(1000 * primary["project"], 2),
                "bare_ms": round(1000 * primary["bare"], 2),
                "ratio": round(primary["project"] / primary["bare"], 4),
                "timer": "process_time" if device.type == "cpu" else "perf_counter",
                "wall_ratio": round(w["project"] / w["bare"], 4),
                "min_cpu_ratio": round(min(cpu["project"]) / min(cpu["bare"]), 4),
                "rounds": args.rounds,
                "steps_per_round": args.steps,
            }
        )
    )


if __name__ == "__main__":
    main()
