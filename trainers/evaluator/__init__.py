"""The evaluator: a ResNet18 multi-label judge of generated images, compatible with the official i-CLEVR one.

    ev = Evaluator.load("data/iclevr-synth-64/evaluator.pt")   # official {"model": sd} or project checkpoint
    ev.accuracy(images, labels)                                 # images (B, 3, H, W) in [-1, 1]
    evaluate_generator(generate, ev, {"test": c1, "new_test": c2}, real=real_images)
    check_evaluator(path, data_fingerprint=ds.fingerprint)      # the guard of a judge with its own record
    measured_judge(path, data_spec=..., data_fingerprint=..., floor=0.9, cache_dir=...)  # the search's guard

Fitting, scoring and measuring from the shell: ``python -m trainers.evaluator fit|score|calibrate --help`` and
docs/evaluator.md.
"""

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
