"""The evaluator: a ResNet18 multi-label judge of generated images, compatible with the official i-CLEVR one.

    ev = Evaluator.load("data/iclevr-synth-64/evaluator.pt")   # official {"model": sd} or project checkpoint
    ev.accuracy(images, labels)                                 # images (B, 3, H, W) in [-1, 1]
    evaluate_generator(generate, ev, {"test": c1, "new_test": c2}, real=real_images)
    check_evaluator(path, data_fingerprint=ds.fingerprint)      # the guard of a judge with its own record
    measured_judge(path, data_spec=..., data_fingerprint=..., floor=0.9, cache_dir=...)  # the search's guard

Fitting, scoring and measuring from the shell: ``python -m trainers.evaluator fit|score|calibrate --help`` and
docs/evaluator.md.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainers.evaluator.calibrate import (
        calibrate,
        calibration_dir,
        check_matches,
        describe,
        judge_data,
        measured_judge,
        stratified_sample,
    )
    from trainers.evaluator.fit import FitConfig, fit, split_indices
    from trainers.evaluator.metrics import (
        FeatureStats,
        feature_stats,
        frechet_distance,
        per_class_f1,
        topk_accuracy,
    )
    from trainers.evaluator.model import (
        RESOLUTION,
        Evaluator,
        EvaluatorError,
        ResNet18,
        as_model_input,
        check_evaluator,
        read_sidecar,
        sidecar_path,
    )
    from trainers.evaluator.protocol import (
        draw_seed,
        evaluate_codes,
        evaluate_generator,
        match_codes,
        matched_accuracy,
        real_feature_stats,
    )

# Each name is imported from its module on first use (PEP 562), not here: importing the package (which
# `python -m trainers.evaluator` does before its __main__) then costs no torch, so the command line parses and
# refuses bad arguments in a fraction of a second; `from trainers.evaluator import Evaluator` is unchanged.
_HOMES = {
    "calibrate": "calibrate",
    "calibration_dir": "calibrate",
    "check_matches": "calibrate",
    "describe": "calibrate",
    "judge_data": "calibrate",
    "measured_judge": "calibrate",
    "stratified_sample": "calibrate",
    "FitConfig": "fit",
    "fit": "fit",
    "split_indices": "fit",
    "FeatureStats": "metrics",
    "feature_stats": "metrics",
    "frechet_distance": "metrics",
    "per_class_f1": "metrics",
    "topk_accuracy": "metrics",
    "RESOLUTION": "model",
    "Evaluator": "model",
    "EvaluatorError": "model",
    "ResNet18": "model",
    "as_model_input": "model",
    "check_evaluator": "model",
    "read_sidecar": "model",
    "sidecar_path": "model",
    "draw_seed": "protocol",
    "evaluate_codes": "protocol",
    "evaluate_generator": "protocol",
    "match_codes": "protocol",
    "matched_accuracy": "protocol",
    "real_feature_stats": "protocol",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
        globals()[name] = value  # once: later reads skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """Importing a submodule binds it on the package; `fit` and `calibrate` are both a submodule and the function
    it exports: the package keeps the function, as the eager imports it replaces did."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _HOMES.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "RESOLUTION",
    "Evaluator",
    "EvaluatorError",
    "FeatureStats",
    "FitConfig",
    "ResNet18",
    "as_model_input",
    "calibrate",
    "calibration_dir",
    "check_evaluator",
    "check_matches",
    "describe",
    "draw_seed",
    "evaluate_codes",
    "evaluate_generator",
    "feature_stats",
    "fit",
    "frechet_distance",
    "judge_data",
    "match_codes",
    "matched_accuracy",
    "measured_judge",
    "per_class_f1",
    "read_sidecar",
    "real_feature_stats",
    "sidecar_path",
    "split_indices",
    "stratified_sample",
    "topk_accuracy",
]
