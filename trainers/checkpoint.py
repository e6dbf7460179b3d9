"""Exact checkpoints: everything a resumed run needs to continue bit-identically, as plain data.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, loadable with
`torch.load(path, weights_only=True)`: G, D, EMA of G, both optimizers, step, epoch, every RNG state
(torch, CUDA, numpy, Python, the batch sampler's generator), the config, and what was built from the data
(image size, classes, fingerprint). It is written to a temporary file in the same directory and renamed
into place, so a crash while saving leaves the previous checkpoint intact.

A generator file is the sampling part of a checkpoint only (`generator_state`): the config, the data info and
one state_dict, the EMA weights when the run kept an EMA, else G's. No D, no optimizer state: what a search
keeps per trial once the trial has ended, what MLflow receives, and what the pyfunc model loads.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.build import build_generator, eval_weights
from trainers.config import ConfigError, TrainConfig
from trainers.models.generators import Generator
from trainers.step import GAN

FORMAT = 1


def rng_state(data_generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        # Only when this process uses CUDA: asking for the states would initialise it (a CPU run on a GPU
        # machine would open a CUDA context for nothing).
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_to_plain(random.getstate()),
        "data": data_generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], data_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    # CUDA states matter only to a run on CUDA (its latents); a GPU checkpoint resuming on the CPU, or on a
    # node with fewer GPUs, restores what exists. The sampler below is a CPU generator on every device.
    if state["cuda"] and torch.cuda.is_initialized():
        for i, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, i)
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    _set_sampler_state(data_generator, state["data"])


def _set_sampler_state(generator: torch.Generator, saved: torch.Tensor) -> None:
    """The batch sampler's state: a CPU generator's (Mersenne Twister) on every device since 2026-12-01.
    Before, a run on CUDA drew its batch indices from a CUDA generator (Philox: seed and offset, 16 bytes),
    which no CPU generator can continue: such a state reseeds the sampler from its seed and offset, so the
    run resumes anywhere, with another (still deterministic) batch order, and says so."""
    if saved.numel() == generator.get_state().numel():
        generator.set_state(saved)
        return
    seed, offset = (int.from_bytes(bytes(saved[i : i + 8].tolist()), "little") for i in (0, 8))
    warnings.warn(
        "checkpoint's batch sampler state is a CUDA generator's (written before 2026-12-01): "
        "the resumed run draws a different batch order",
        stacklevel=3,
    )
    generator.manual_seed((seed * 1_000_003 + offset) % 2**63)


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _cpu(tree: Any) -> Any:
    """Tensors to CPU (so a GPU checkpoint loads anywhere); containers rebuilt as plain dicts/lists."""
    if torch.is_tensor(tree):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_cpu(v) for v in tree]
    return tree


def make_checkpoint(
    gan: GAN,
    *,
    epoch: int,
    data_generator: torch.Generator,
    data_info: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "config": gan.config.to_dict(),
        "data": dict(data_info),  # image_size, n_classes, classes, fingerprint
        "G": _cpu(gan.G.state_dict()),
        "D": _cpu(gan.D.state_dict()),
        "G_ema": _cpu(gan.G_ema.state_dict()) if gan.G_ema is not None else None,
        "opt_g": _cpu(gan.opt_g.state_dict()),
        "opt_d": _cpu(gan.opt_d.state_dict()),
        "step": gan.step,
        "epoch": epoch,
        "rng": _cpu(rng_state(data_generator)),
        "metrics": dict(metrics or {}),
    }


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save to a temporary sibling, fsync, then os.replace: the old file survives any crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """A trainer checkpoint. Its config is read as today's fields (the defaults of keys added since it was
    saved, each the old behaviour, e.g. flip off; old spellings such as d_norm: spectral upgraded), so older
    checkpoints resume and load. `mmap` reads tensors only when touched: slimming a 400 MiB checkpoint to its
    generator reads the generator's bytes alone. Raises CheckpointError (one line) for anything else."""
    state = _torch_load(path, mmap=mmap)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: {_what_instead(state)}")
    if "config" in state:
        state["config"] = _current_config(path, state["config"])
    return state


class CheckpointError(ValueError):
    """A file that is not a readable trainer checkpoint. str(err) is one line naming the file."""


def _torch_load(path: str | os.PathLike, *, mmap: bool) -> Any:
    """torch.load with every way a file can fail to be one turned into a one-line CheckpointError."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (e.g. RUN/last.pt)") from None
    except PermissionError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"{path}: holds pickled Python objects, not a trainer checkpoint (plain tensors and numbers, "
                "loaded with the safe weights-only loader)"
            ) from None
        raise CheckpointError(f"{path}: not a torch file (corrupt, or not written by torch.save)") from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        # torch reports a truncated zip as RuntimeError("PytorchStreamReader failed ..."), an empty file as EOF
        kind = "truncated or corrupt" if "zip" in str(err).lower() or isinstance(err, EOFError) else "corrupt"
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({kind})") from None


def _what_instead(state: Any) -> str:
    """What a torch file that is not a trainer checkpoint holds, so the refusal says what was given."""
    if is_generator_file(state):
        return "a generator file (sampling weights only), not a full trainer checkpoint"
    if isinstance(state, dict) and "model" in state and "format" not in state:
        return 'an evaluator checkpoint ({"model": state_dict}), not a trainer checkpoint'
    if isinstance(state, dict) and "format" in state:
        return f"checkpoint format {state['format']!r}, this code reads format {FORMAT}"
    if isinstance(state, dict):
        kind = f"a dict with keys {', '.join(map(repr, list(state)[:5]))}"
    else:
        kind = f"a {type(state).__name__}"
    return f"{kind}, not a trainer checkpoint (trainers.train writes RUN/last.pt and RUN/best.pt)"


def _current_config(path: str | os.PathLike, config: Any) -> dict[str, Any]:
    """A saved config dict as this code's TrainConfig reads it (new keys' defaults, old spellings upgraded)."""
    try:
        return TrainConfig.from_dict(config).to_dict()
    except (ConfigError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: its config is not valid for this code: {err}") from None


def restore(gan: GAN, state: dict[str, Any], *, data_generator: torch.Generator) -> int:
    """Load weights, optimizer states, step and RNG states into a freshly built GAN; returns the epoch."""
    gan.G.load_state_dict(state["G"])
    gan.D.load_state_dict(state["D"])
    if gan.G_ema is not None:
        gan.G_ema.load_state_dict(state["G_ema"])
    gan.opt_g.load_state_dict(state["opt_g"])
    gan.opt_d.load_state_dict(state["opt_d"])
    gan.step = int(state["step"])
    set_rng_state(state["rng"], data_generator)
    return int(state["epoch"])


def generator_state(state: dict[str, Any]) -> dict[str, Any]:
    """The generator file of a trainer checkpoint: what sampling needs, nothing to resume training with.
    The EMA weights over G's, as evaluation picks them (`trainers.build.eval_weights`)."""
    return {
        "config": state["config"],
        "data": state["data"],
        "ema": state["G_ema"] is not None,
        "state_dict": eval_weights(state["G"], state["G_ema"]),
    }


def is_generator_file(state: Any) -> bool:
    return isinstance(state, dict) and set(state) == {"config", "data", "ema", "state_dict"}


def read_generator(path: str | os.PathLike) -> dict[str, Any]:
    """The generator file at `path`, or the generator part of the trainer checkpoint at `path`. Raises
    CheckpointError (one line) for a file that is neither."""
    state = _torch_load(path, mmap=True)
    if is_generator_file(state):
        return {**state, "config": _current_config(path, state["config"])}
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return generator_state({**state, "config": _current_config(path, state["config"])})
    raise CheckpointError(f"{path}: neither a trainer checkpoint (format {FORMAT}) nor a generator file")


def save_generator(source: str | os.PathLike, path: str | os.PathLike) -> dict[str, Any]:
    """Write the generator file of `source` (a checkpoint or a generator file) to `path`, atomically (a
    reader of the old file, or a hard link to it, keeps the old bytes); returns its contents."""
    slim = read_generator(source)
    save_checkpoint(slim, path)
    return slim


def build_from_generator(slim: dict[str, Any], *, device: str | torch.device = "cpu"):
    """(generator in eval mode, TrainConfig, data info) from a generator file's contents."""
    config = TrainConfig.from_dict(slim["config"])
    info = slim["data"]
    g = build_generator(config, image_size=int(info["image_size"]), n_classes=int(info["n_classes"]))
    g.load_state_dict(slim["state_dict"])
    return g.to(device).eval(), config, info


def load_generator(
    path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[Generator, TrainConfig, dict]:
    """The generator to use for sampling (EMA weights when the run kept an EMA), in eval mode, with its
    config and data info (image_size, n_classes, classes, fingerprint), from a trainer checkpoint or a
    generator file. Draw z with `trainers.latent.Latent.from_config(config).sample(...)`."""
    return build_from_generator(read_generator(path), device=device)
