"""Search cGAN recipes on scikit-learn's handwritten digits (10 classes, fast on a CPU).

    python search/digits.py [--smoke-test] [--help]

The same driver as search/clevr.py with other defaults: proof that the driver is not tied to one dataset.
"""

import sys

from search.budget import Budget, EntryDefaults
from search.driver import main

DIGITS = EntryDefaults(
    name="digits",
    description="Search conditional-GAN recipes on the digits dataset.",
    model_name="digits-cgan",
    data="digits",
    # grace_epochs / reduction_factor: NOT chosen by bench/simulate.py yet. Its table
    # (bench/results/curves-digits-32.parquet, 2026-12-02) holds 6 configurations x 1 seed x 10 epochs, where one
    # recipe leads from epoch 6 and every setting has regret 0 (BENCHMARKS.md "Scheduler simulation"): too few
    # to move a default, so 2 / 2 stay until a table of >= 48 configurations x 2 seeds replays them.
    cpu=Budget(
        space="digits.yaml", size=32, num_samples=12, max_epochs=10, grace_epochs=2, reduction_factor=2
    ),
    gpu=Budget(
        space="digits.yaml",
        size=32,
        num_samples=48,
        max_epochs=60,
        grace_epochs=5,
        reduction_factor=3,
        presets=("infogan_digits", "wgan_gp_instance"),
    ),
    smoke=Budget(
        space="smoke.yaml",
        size=16,
        num_samples=6,
        max_epochs=3,
        grace_epochs=1,
        reduction_factor=2,
        evaluator_fit=(("width", 8), ("epochs", 2)),
        evaluator_floor=0.0,
    ),
)

if __name__ == "__main__":
    sys.exit(main(DIGITS))
