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
