"""A trained generator as an MLflow pyfunc model: a batch of label sets in, a batch of images out.

    model = mlflow.pyfunc.load_model("models:/clevr-cgan@champion")
    images = model.predict(pd.DataFrame({"labels": [["red cube"], ["blue sphere", "gray cylinder"]]}),
                           params={"seed": 0})      # uint8 (B, H, W, 3)

The model holds plain data only: the trial's generator file (trainers.checkpoint.generator_state: the
TrainConfig dict, the data info (image size, class names) and the generator's state_dict, EMA weights when
the trial kept an EMA). `load_context` reads it with the trainers' own loader (trainers.checkpoint.load_generator),
so nothing is a pickled closure and the weights load with `torch.load(weights_only=True)`. The model's code is
search/pyfunc_model.py (MLflow "models from code"), not a pickled PythonModel: no pickle is written or read.
Loading needs this package installed (`pip install -e .`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

GENERATOR_FILE = "generator.pt"  # the artifact a registered model holds: trainers.checkpoint.generator_state


def multi_hot(label_sets: Sequence[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    """Label-name lists -> (B, C) float32; an unknown name is a ValueError naming it and the valid ones."""
    index = {name: i for i, name in enumerate(classes)}
    out = np.zeros((len(label_sets), len(classes)), dtype=np.float32)
    for row, labels in enumerate(label_sets):
        if isinstance(labels, str):
            labels = [labels]
        for name in labels:
            if name not in index:
                raise ValueError(f"unknown label {name!r} in entry {row}; valid: {', '.join(classes)}")
            out[row, index[name]] = 1.0
    return out


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: predict(DataFrame with a 'labels' column of label-name lists) -> uint8 (B, H, W, 3)."""

    def load_context(self, context) -> None:
        from trainers.checkpoint import load_generator

        self.use(*load_generator(context.artifacts["generator"]))

    def use(self, generator, config, info: dict[str, Any]) -> GeneratorModel:
        """Serve `generator` (from trainers.checkpoint.load_generator): what load_context does with the
        model's artifact, and how promotion predicts the signature's example before anything is saved."""
        self.generator, self.config, self.info = generator, config, info
        self.classes = list(info.get("classes") or [str(i) for i in range(int(info["n_classes"]))])
        if config.g_cond == "none":
            raise ValueError(
                f"this generator is not conditioned on labels (g_cond none, arch {config.arch}): "
                "it cannot map label sets to images"
            )
        return self

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        """model_input: a DataFrame (or dict) with a "labels" column of label-name lists; params: {"seed"}."""
        import torch

        from trainers.latent import Latent

        label_sets = [[x] if isinstance(x, str) else list(x) for x in model_input["labels"]]
        y = torch.from_numpy(multi_hot(label_sets, self.classes))  # (B, C)
        seed = int((params or {}).get("seed", 0))
        gen = torch.Generator().manual_seed(seed)
        z, _ = Latent.from_config(self.config).sample(len(y), device=torch.device("cpu"), generator=gen)
        with torch.no_grad():
            images = self.generator(z, y)  # (B, 3, H, W) in [-1, 1]
        return images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def example_input(classes: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({"labels": [[classes[0]], list(classes[: min(3, len(classes))])]})
