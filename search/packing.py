"""`--gpus-per-trial auto`: how many trials share one GPU, from the measured memory of a probe step.

Ray's fractional GPUs have no memory isolation: with `--gpus-per-trial 0.25` four trials share a GPU whether
or not they fit. `auto` measures instead. On one GPU of the cluster (a Ray task holding a whole GPU) it builds
the largest configurations the space can sample at the search's image size, runs one training step and one
evaluation of each, and reads the peak memory the process reserved. One trial needs that peak, plus its own
copy of the dataset (DeviceData puts the whole set on the device), plus a CUDA context; with a safety margin,
`floor(GPU memory / need)` trials fit, and the fraction is one over that.

"Largest" is found by enumerating the axes that change memory most (architecture, loss, D normalisation) and
taking, on every other axis, the largest number the space allows (width, batch size, z, embedding, EMA on)
and the heavier of the named choices (below). Nothing here imports Ray: the probe runs anywhere torch does
(bench/gpu.py calls it on a bare GPU machine).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

MARGIN = 1.25  # allocator fragmentation, cuDNN workspaces that vary by algorithm, choices not probed
ENUMERATED = ("loss", "arch", "d_norm")  # the axes whose choices change activation memory most: every value
# Heavier first, for named choices that are not enumerated. The margin covers a wrong guess here: these axes
# change a step's memory by a few percent at most (an auxiliary head, a label channel, one optimizer buffer).
HEAVIER: dict[str, tuple[str, ...]] = {
    "g_norm": ("batch", "none"),  # batch norm keeps its inputs for backward
    "g_cond": ("cbn", "embed", "concat", "none"),  # cbn: an embedding per norm layer
    "d_cond": ("channel+acgan", "late+acgan", "acgan", "channel", "late", "projection", "none"),
    "optimizer": ("adam", "rmsprop"),  # Adam keeps two moments per weight, RMSprop one
}


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


class _LargestTrial:
    """Answers the space's define-by-run calls with the largest value (fixed ones for the enumerated axes)
    and notes the first enumerated axis it was asked about that is not fixed yet."""

    def __init__(self, fixed: dict[str, Any]):
        self.fixed, self.branch_point = fixed, None

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        choices = list(choices)
        if name in ENUMERATED:
            if name in self.fixed:
                return self.fixed[name]
            if self.branch_point is None:
                self.branch_point = (name, choices)
            return choices[0]
        if all(_is_number(c) for c in choices):
            return max(choices)
        if name == "diffaug":  # more policies, more copies of the batch
            return max(choices, key=lambda c: len([p for p in str(c or "").split(",") if p]))
        order = HEAVIER.get(name, ())
        return min(choices, key=lambda c: order.index(c) if c in order else len(order))

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        return high

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        return high


def largest_configs(space) -> list[dict[str, Any]]:
    """One config per reachable (loss, arch, d_norm) of `space`, each at its largest elsewhere; n_critic 1
    (each D update frees its graph before the next: more of them take time, not memory)."""

    def walk(fixed: dict[str, Any]) -> Iterator[dict[str, Any]]:
        trial = _LargestTrial(fixed)
        config = space.define_by_run(trial)
        if trial.branch_point is None:
            yield config
            return
        name, choices = trial.branch_point
        for choice in choices:
            yield from walk({**fixed, name: choice})

    seen, out = set(), []
    for config in walk({}):
        config = {**config, "n_critic": 1} if "n_critic" in config else config
        key = tuple(sorted((k, repr(v)) for k, v in config.items()))
        if key not in seen:
            seen.add(key)
            out.append(config)
    return out


@dataclass(frozen=True)
class Probe:
    """What one probe measured on one GPU (bytes)."""

    gpu: str  # torch.cuda.get_device_name
    total: int  # the GPU's memory
    context: int  # in use on the GPU once this process opened its CUDA context (others' use included)
    peak: int  # max over the configs of torch.cuda.max_memory_reserved after one step and one evaluation
    peak_config: dict[str, Any]
    data: int  # one trial's device copy of the dataset
    n_configs: int
    seconds: float


def probe(
    configs: Sequence[dict[str, Any]],
    *,
    size: int,
    n_classes: int,
    n_images: int,
    judge_width: int,
    device: str = "cuda",
    log: Callable[[str], None] | None = None,
) -> Probe:
    """One training step and one judge evaluation of each config on `device`, measured one at a time."""
    import time

    import torch

    from trainers.config import TrainConfig
    from trainers.evaluator import Evaluator, ResNet18
    from trainers.step import build_gan, train_step

    start = time.perf_counter()
    dev = torch.device(device)
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info(dev)
    context = total - free
    peak, peak_config = 0, None
    for config in configs:
        cfg = TrainConfig.from_dict(config)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        gan = build_gan(cfg, image_size=size, n_classes=n_classes, device=dev)
        data = _RandomBatches(cfg.batch_size, size, n_classes, dev)
        train_step(gan, data, torch.Generator().manual_seed(0))
        gan.read_losses()  # waits for the step: the peak is complete
        judge = Evaluator(ResNet18(n_classes=n_classes, width=judge_width), device=dev)
        with torch.no_grad(), gan.autocast():  # the trainer's evaluation: 256 generated images, then scored
            z, _ = gan.latent.sample(256, device=dev)
            images = gan.generator_for_eval(z, torch.zeros(256, n_classes, device=dev)).float()
        judge.scores(images)
        used = torch.cuda.max_memory_reserved(dev)
        if log is not None:
            log(f"probe {cfg.arch}/{cfg.loss}/{cfg.d_norm}: {used / 2**30:.2f} GiB")
        if used > peak:
            peak, peak_config = used, config
        del gan, data, judge, images
    torch.cuda.empty_cache()
    data_bytes = n_images * (3 * size * size + 4 * n_classes)  # uint8 images + float32 labels
    name = torch.cuda.get_device_name(dev)
    return Probe(
        name, total, context, peak, peak_config or {}, data_bytes, len(configs), time.perf_counter() - start
    )


class _RandomBatches:
    """The DeviceData contract at the probe's batch size (memory does not depend on the pixels)."""

    def __init__(self, batch: int, size: int, n_classes: int, device):
        import torch

        self.x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
        self.y = (torch.rand(batch, n_classes, device=device) < 0.3).float()

    def sample(self, batch_size: int, generator):
        return self.x[:batch_size], self.y[:batch_size]


def need_per_trial(p: Probe) -> int:
    """Bytes one trial holds: its peak with the margin, its dataset copy, its CUDA context."""
    return math.ceil(p.peak * MARGIN) + p.data + p.context


def fraction(p: Probe) -> tuple[float, str]:
    """(GPUs per trial, why): one over the number of trials whose need fits in the GPU's memory."""
    need = need_per_trial(p)
    n = max(1, p.total // need)
    gib = 2**30
    c = p.peak_config
    why = (
        f"{n} trial(s) per GPU: one needs {need / gib:.2f} GiB = {MARGIN:g} x {p.peak / gib:.2f} GiB peak "
        f"(largest of {p.n_configs} probe configs: {c.get('arch')}/{c.get('loss')}/{c.get('d_norm')}, width "
        f"{c.get('width')}, batch {c.get('batch_size')}) + {p.data / gib:.2f} GiB dataset + "
        f"{p.context / gib:.2f} GiB CUDA context, of {p.total / gib:.1f} GiB on a {p.gpu}"
    )
    if p.total < need:
        why += "; even one trial may not fit: the largest configs can run out of memory"
    return 1.0 / n, why
