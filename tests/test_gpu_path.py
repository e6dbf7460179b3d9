"""The GPU path, checked on the CPU: the judge scores in fp32 under any autocast, a zero-GPU trial never
touches CUDA, the batch sampler's state is device-independent (a GPU checkpoint resumes on the CPU), the GPU
budget's judge is a measured recipe, `--gpus-per-trial auto` refuses a cluster without GPUs, and
`bench/gpu.py --device cpu --tiny` runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers.config import TrainConfig
from trainers.data import DeviceData
from trainers.evaluator import Evaluator, ResNet18
from trainers.train import train

from .tiny import N_CLASSES, TINY, random_set

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


# --- the judge scores in fp32 --------------------------------------------------------------------------------


def _judge() -> Evaluator:
    torch.manual_seed(0)
    net = ResNet18(n_classes=N_CLASSES, width=4)
    for m in net.modules():  # trained-looking batch-norm statistics: logits far from 0, as a real judge's
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(0.05)
    return Evaluator(net, device="cpu")


def test_scores_stay_fp32_under_an_enclosing_bf16_autocast():
    ev = _judge()
    images = torch.rand(6, 3, 64, 64) * 2 - 1
    plain_p, plain_f = ev.scores_and_features(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        p, f = ev.scores_and_features(images)
        # The same forward pass outside the evaluator does run in bf16 (so the check below can fail).
        with torch.inference_mode():
            leaked = ev.net(ev.prepare(images))
    assert leaked.dtype == torch.bfloat16
    assert p.dtype == f.dtype == torch.float32
    assert torch.equal(p, plain_p) and torch.equal(f, plain_f)  # bit-identical: no bf16 anywhere


def test_score_path_declares_no_autocast_of_its_own():
    import inspect

    from trainers.evaluator import model

    source = inspect.getsource(model.Evaluator.scores_and_features) + inspect.getsource(
        model.Evaluator.prepare
    )
    assert "bfloat16" not in source and "float16" not in source


# --- a zero-GPU trial never touches CUDA -------------------------------------------------------------------


def test_zero_gpu_trial_hides_the_gpus_before_torch_sees_them():
    # A fresh interpreter: CUDA visibility is decided once per process. run_trial calls trial_device first.
    code = (
        "import os, torch\n"
        "from search.trial import trial_device\n"
        "os.environ['CUDA_VISIBLE_DEVICES'] = '0'\n"  # what a GPU node shows a zero-GPU Ray actor
        "device = trial_device(False)\n"
        "from trainers.checkpoint import rng_state\n"
        "rng_state(torch.Generator())\n"  # what a trial's checkpoint asks torch
        "print(device, repr(os.environ['CUDA_VISIBLE_DEVICES']), torch.cuda.is_available(),"
        " torch.cuda.device_count(), torch.cuda.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["cpu", "''", "False", "0", "False"]


def test_run_trial_chooses_its_device_through_trial_device():
    import inspect

    import search.trial

    source = inspect.getsource(search.trial.run_trial)
    assert "trial_device(setup.use_gpu)" in source
    assert source.index("trial_device(") < source.index("Evaluator.from_bytes(")


# --- checkpoints resume across devices --------------------------------------------------------------------


def _cfg() -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "arch": "dcgan",
            "loss": "hinge",
            "g_cond": "concat",
            "d_cond": "channel",
            "d_norm": "spectral",
            **TINY,
        }
    )


def _train(out: Path, epochs: int, resume: Path | None = None):
    return train(
        _cfg(),
        random_set(),
        epochs=epochs,
        out_dir=out,
        evaluator=None,
        conditions={},
        resume=resume,
        progress=False,
        device="cpu",
    )


def test_sampler_state_is_a_cpu_generator_state(tmp_path):
    state = torch.load(_train(tmp_path, 1)["checkpoint"], weights_only=True)
    saved = state["rng"]["data"]
    assert saved.device.type == "cpu" and saved.dtype == torch.uint8
    assert saved.numel() == torch.Generator().get_state().numel()  # Mersenne Twister, not CUDA's Philox
    assert state["rng"]["cuda"] == []  # a CPU run never asked for CUDA states


def test_gpu_checkpoint_resumes_on_the_cpu_with_the_same_batch_order(tmp_path):
    import trainers.checkpoint as ckpt

    full = _train(tmp_path / "full", 2)
    first = _train(tmp_path / "half", 1)
    state = torch.load(first["checkpoint"], weights_only=True)
    # What a CUDA run adds to the same checkpoint: per-GPU Philox states (seed, offset: 16 bytes each).
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    gpu_like = ckpt.save_checkpoint(state, tmp_path / "gpu.pt")
    # The next batches after the checkpoint, drawn from its restored sampler: those of the run that went on.
    sampler = torch.Generator()
    ckpt.set_rng_state(torch.load(gpu_like, weights_only=True)["rng"], sampler)
    reference = torch.Generator()
    reference.set_state(state["rng"]["data"])
    data = DeviceData(random_set())
    for _ in range(3):
        assert torch.equal(data.sample(2, sampler)[1], data.sample(2, reference)[1])
    resumed = _train(tmp_path / "resumed", 2, resume=gpu_like)
    a = torch.load(full["checkpoint"], weights_only=True)
    b = torch.load(resumed["checkpoint"], weights_only=True)
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])


def test_a_legacy_cuda_sampler_state_still_resumes(tmp_path):
    import trainers.checkpoint as ckpt

    state = torch.load(_train(tmp_path / "a", 1)["checkpoint"], weights_only=True)
    state["rng"]["data"] = torch.arange(16, dtype=torch.uint8)  # a CUDA generator's state (before 12-01)
    path = ckpt.save_checkpoint(state, tmp_path / "legacy.pt")
    with pytest.warns(UserWarning, match="different batch order"):
        result = _train(tmp_path / "b", 2, resume=path)
    assert result["epoch"] == 2


# --- the GPU budget's judge ---------------------------------------------------------------------------------


def test_gpu_budget_judge_is_the_measured_recipe():
    # docs/evaluator.md: width 32, 16 epochs, lr 2e-3 on 10,000 scenes at 64x64 -> held-out 0.978 (floor 0.9).
    from search.clevr import CLEVR
    from trainers.evaluator import FitConfig

    gpu = CLEVR.gpu
    fit = FitConfig(**dict(gpu.evaluator_fit))
    assert (gpu.scenes, gpu.size, gpu.evaluator_floor) == (10000, 64, 0.9)
    assert (fit.width, fit.epochs, fit.lr) == (32, 16, 2e-3)


# --- --gpus-per-trial auto ---------------------------------------------------------------------------------


def test_gpus_per_trial_auto_refuses_a_cluster_without_gpus(capsys):
    from search.clevr import CLEVR
    from search.options import complete, parse

    args, parser = parse(CLEVR, ["--gpus-per-trial", "auto"])
    assert complete(
        args, parser, CLEVR, cluster_gpus=None
    ).gpus_auto  # before Ray: accepted, not yet measured
    with pytest.raises(SystemExit) as exit_:
        complete(args, parser, CLEVR, cluster_gpus=0)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--gpus-per-trial auto: the Ray cluster has no GPU" in err


def test_largest_configs_cover_every_loss_arch_and_d_norm_at_the_largest_sizes():
    from search.packing import largest_configs
    from spaces import load_space

    space = load_space(ROOT / "spaces" / "clevr.yaml")
    configs = largest_configs(space)
    samples = [space.sample(seed) for seed in range(300)]
    # Every (loss, arch, d_norm) that sampling reaches is probed, each at the space's largest sizes.
    assert {(s["loss"], s["arch"], s["d_norm"]) for s in samples} <= {
        (c["loss"], c["arch"], c["d_norm"]) for c in configs
    }
    for key in ("width", "batch_size", "z_dim"):
        assert {c[key] for c in configs} == {max(s[key] for s in samples)}
    assert all(TrainConfig.from_dict(c).ema > 0 for c in configs)


def test_fraction_divides_the_gpu_by_the_measured_need():
    from search.options import _resource
    from search.packing import MARGIN, Probe, fraction, need_per_trial

    gib = 2**30
    probe = Probe("H200", 140 * gib, gib // 2, 20 * gib, {"arch": "resnet"}, gib // 2, 31, 12.0)
    assert need_per_trial(probe) == MARGIN * 20 * gib + gib
    share, why = fraction(probe)
    assert share == 1 / 5 and _resource(str(share)) == share  # 140 // 26 = 5 trials; a fraction Ray accepts
    assert "5 trial(s) per GPU" in why and "H200" in why
    share, why = fraction(Probe("T4", 16 * gib, gib // 2, 20 * gib, {}, gib, 31, 1.0))
    assert share == 1.0 and "may not fit" in why


# --- bench/gpu.py on the CPU --------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_bench_runs_at_toy_sizes_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.gpu",
        "--device",
        "cpu",
        "--tiny",
        "--out",
        str(out),
        "--budget",
        "240",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    res = json.loads(out.read_text())
    assert res["forbidden_imports"] == []  # the GPU machine has no ray, optuna or mlflow
    c = res["correctness"]
    assert c["status"] == "ok" and c["stepped"] == c["combinations"] > 0 and c["failures"] == []
    assert c["judge_random_weights"]["identical"]
    assert {r["preset"] for r in res["speed"]["rows"]} == {"dcgan_bce", "sagan_wgan_gp"}
    assert all(r["images_per_s"] > 0 for r in res["speed"]["rows"])
    assert [r["trials"] for r in res["packing"]["rows"]] == [1, 2]
    assert res["auto"]["probe_configs"] > 0
    q = res["search"]
    assert q["status"] == "ok" and len(q["rows"]) == 5 and q["judge_trained"]["identical"]
    assert "not a GPU figure" in out.with_suffix(".md").read_text()
