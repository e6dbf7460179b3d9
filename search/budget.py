"""What an entry script declares: its `EntryDefaults` (data, model name) and three `Budget`s (cpu, gpu, smoke).

A budget field that is also a command-line option has a row of the same name in `search.options.OPTIONS`
(its flag, type and help); the rest (`scenes`, `evaluator_fit`) are set by the entry alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUDGET_NAMES = (
    "cpu",
    "gpu",
    "smoke",
)  # smoke with --smoke-test, gpu when the Ray cluster has a GPU, else cpu


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How big one search is. Times are for 2 CPU cores (cpu), one GPU (gpu) or a test (smoke)."""

    space: str | Path  # file name under spaces/, or a path (an absolute Path once the options are completed)
    size: int  # training resolution; the evaluator always sees 64x64
    num_samples: int
    max_epochs: int
    grace_epochs: int
    reduction_factor: int
    scenes: int = 0  # synthetic i-CLEVR scenes to render (3 images each); 0 for other data
    evaluator_fit: tuple[tuple[str, object], ...] = ()  # FitConfig overrides for an auto-fitted judge
    evaluator_floor: float = 0.9  # the guard of the evaluator issue; a smoke judge is allowed to be weak
    presets: tuple[
        str, ...
    ] = ()  # spaces/presets/ recipes enqueued first (warm start) when they fit the space


@dataclass(frozen=True)
class EntryDefaults:
    """What makes one entry script different from another: nothing else may differ."""

    name: str  # experiment prefix
    description: str
    model_name: str  # registered model name used by --promote and search.promote
    data: str  # "synthetic", "digits", a folder or a .parquet pack
    cpu: Budget
    gpu: Budget
    smoke: Budget
