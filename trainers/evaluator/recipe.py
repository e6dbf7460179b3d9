"""The evaluator's defaults as plain data (no torch): what `python -m trainers.evaluator` shows in --help and
checks its arguments against before it loads torch. fit.py and calibrate.py use them (and re-export them)."""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE = 3000  # images scored: the standard error of a ~0.9 accuracy over ~6,000 labels is ~0.004
DIGITS_SIZE = 32  # the digits track trains its generators at 32x32: judge what they will produce


@dataclass(frozen=True)
class FitConfig:
    """The recipe. Defaults: the CPU recipe measured in docs/evaluator.md (held-out 0.95 on 27k synthetic images)."""

    width: int = 16  # 1/16 of resnet18's FLOPs; per CPU second it beats 32 while data is the limit
    epochs: int = 16  # 10,000 scenes x 16 epochs: 0.95 held-out (docs/evaluator.md); fresh data beats epochs
    batch_size: int = 64  # small batches: more steps per CPU second, and 32-64 generalized best here
    lr: float = 3e-3  # OneCycle peak for AdamW
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    max_shift: int = 3  # pixels of random translation; objects sit well inside the 64x64 frame
    flip: bool = True  # a mirror image keeps every color/shape label
    max_train: int | None = None  # use at most this many training images (None = all)
    seed: int = 0

    def __post_init__(self):
        if self.width < 1 or self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"width, epochs >= 1 and batch_size >= 2 required: {self}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
