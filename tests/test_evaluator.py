"""The evaluator: official accuracy, official checkpoint compatibility, FID, the protocol, the guard, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
import torchvision

from trainers.evaluator import (
    Evaluator,
    EvaluatorError,
    FitConfig,
    ResNet18,
    calibrate,
    calibration_dir,
    check_evaluator,
    describe,
    evaluate_generator,
    feature_stats,
    fit,
    frechet_distance,
    judge_data,
    measured_judge,
    sidecar_path,
    split_indices,
    stratified_sample,
    topk_accuracy,
)
from trainers.evaluator.__main__ import main
from trainers.evaluator.fit import augment


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine two spinning OpenMP threads per process cost 5-10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- accuracy -------------------------------------------------------------------------------------------


def official_compute_acc(out: torch.Tensor, onehot_labels: torch.Tensor) -> float:
    """The course's evaluator.compute_acc, verbatim in substance (torch.topk per image)."""
    acc = total = 0
    for i in range(out.size(0)):
        k = int(onehot_labels[i].sum().item())
        total += k
        _, outi = out[i].topk(k)
        _, li = onehot_labels[i].topk(k)
        acc += sum(int(j in li) for j in outi)
    return acc / total


CASES = {
    # name: (scores, labels, expected)
    "k1_hit": ([[0.9, 0.1, 0.0]], [[1, 0, 0]], 1.0),
    "k1_miss": ([[0.1, 0.9, 0.0]], [[1, 0, 0]], 0.0),
    "k2_one_hit": ([[0.9, 0.8, 0.1, 0.0]], [[1, 0, 1, 0]], 0.5),
    "k3_all": ([[0.1, 0.7, 0.8, 0.9, 0.2]], [[0, 1, 1, 1, 0]], 1.0),
    "k3_two": ([[0.9, 0.7, 0.8, 0.1, 0.2]], [[0, 1, 1, 1, 0]], 2 / 3),
    # k = 1, 2, 3 in one batch: hits 1 + 1 + 2 over 6 labels (not the mean of per-image accuracies)
    "mixed_k": (
        [[0.9, 0.1, 0.2, 0.3], [0.9, 0.8, 0.1, 0.0], [0.1, 0.9, 0.8, 0.7]],
        [[1, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]],
        4 / 6,
    ),
    # ties go to the lower class index
    "tie_low_index_true": ([[0.5, 0.5, 0.5, 0.1]], [[1, 0, 0, 0]], 1.0),
    "tie_high_index_true": ([[0.5, 0.5, 0.5, 0.1]], [[0, 0, 1, 0]], 0.0),
    "tie_k2": ([[0.2, 0.7, 0.7, 0.7]], [[0, 0, 1, 1]], 0.5),
    "all_zero_scores_miss": ([[0.0] * 5], [[0, 0, 0, 1, 1]], 0.0),
    "all_zero_scores_half": ([[0.0] * 5], [[1, 0, 0, 0, 1]], 0.5),
    # an image without labels adds nothing to hits or total
    "unlabeled_row": ([[0.9, 0.1], [0.2, 0.8]], [[0, 0], [0, 1]], 1.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_topk_accuracy_hand_cases(name):
    scores, labels, expected = CASES[name]
    assert topk_accuracy(torch.tensor(scores), torch.tensor(labels, dtype=torch.float32)) == pytest.approx(
        expected
    )
    assert topk_accuracy(np.array(scores), np.array(labels)) == pytest.approx(
        expected
    )  # numpy in, same answer


def test_topk_accuracy_matches_official_loop_without_ties():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.rand(16, 24, generator=gen)  # continuous: no ties, so topk order is irrelevant
        labels = torch.zeros(16, 24)
        for row in labels:
            row[torch.randperm(24, generator=gen)[: int(torch.randint(1, 4, (1,), generator=gen))]] = 1
        assert topk_accuracy(scores, labels) == pytest.approx(official_compute_acc(scores, labels))


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([[0.1, 0.2]], [[0, 0]], "no true labels"),
        ([[0.1, 0.2]], [[0, 1, 0]], "match"),
        ([[0.1, 0.2]], [[0.5, 0.5]], "multi-hot"),
        ([[0.1, float("nan")]], [[0, 1]], "NaN"),
    ],
)
def test_topk_accuracy_rejects(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        topk_accuracy(torch.tensor(scores), torch.tensor(labels, dtype=torch.float32))


# -- the network and checkpoints -------------------------------------------------------------------------


def official_model(n_classes: int = 24) -> torch.nn.Module:
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Sequential(torch.nn.Linear(512, n_classes), torch.nn.Sigmoid())
    return model


def test_width64_is_torchvision_resnet18():
    ours = ResNet18(n_classes=24, width=64).state_dict()
    theirs = official_model().state_dict()
    assert list(ours) == list(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_official_checkpoint_loads_and_scores_identically(tmp_path):
    torch.manual_seed(0)
    model = official_model().eval()
    for m in model.modules():  # non-trivial running stats, so eval-mode BN is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "classifier_weight.pth"
    torch.save({"model": model.state_dict()}, path)
    ev = Evaluator.load(path, device="cpu")
    assert (ev.width, ev.n_classes, ev.meta) == (64, 24, {})
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = model(images)
    torch.testing.assert_close(ev.scores(images), expected, rtol=1e-5, atol=1e-6)
    assert ev.features(images).shape == (4, 512)
    labels = torch.zeros(4, 24)
    labels[:, 3] = 1
    assert ev.accuracy(images, labels) == topk_accuracy(expected, labels)


@pytest.mark.parametrize("width", [8, 16])
def test_tiny_widths_shapes_and_ranges(width):
    ev = Evaluator(ResNet18(n_classes=5, width=width), device="cpu")
    for size in (64, 32, 80):
        probs, feats = ev.scores_and_features(torch.rand(3, 3, size, size) * 2 - 1)
        assert probs.shape == (3, 5) and feats.shape == (3, 8 * width)
        assert bool(((probs > 0) & (probs < 1)).all())


def test_other_resolutions_are_resized_bilinearly_first():
    ev = Evaluator(ResNet18(n_classes=5, width=8), device="cpu")
    small = torch.rand(2, 3, 32, 32) * 2 - 1
    up = F.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ev.scores(small), ev.scores(up))
    with pytest.raises(ValueError, match="float"):
        ev.scores(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))


def test_project_checkpoint_roundtrip(tmp_path):
    ev = Evaluator(ResNet18(n_classes=3, width=8), classes=("a", "b", "c"), device="cpu")
    path = ev.save(tmp_path / "ev.pt", {"heldout_acc": 0.95, "data_fingerprint": "abc"})
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["model"]  # the official format, nothing else inside
    back = Evaluator.load(path, device="cpu")
    assert back.classes == ("a", "b", "c") and back.width == 8 and back.meta["heldout_acc"] == 0.95
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(back.scores(x), ev.scores(x))


def _write(path, obj):
    torch.save(obj, path)
    return path


def _raw(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated(path):
    torch.save({"model": ResNet18(n_classes=3, width=4).state_dict()}, path)
    path.write_bytes(path.read_bytes()[:500])
    return path


LOAD_ERRORS = [
    (lambda p: p / "missing.pt", "no such checkpoint"),
    (lambda p: _raw(p / "junk.pt", b"not a checkpoint"), "not a torch checkpoint"),
    (lambda p: _raw(p / "empty.pt", b""), "empty file"),
    (lambda p: _truncated(p / "cut.pt"), "corrupt or truncated"),
    # a whole pickled model, as `torch.save(model)` writes: the safe loader refuses its code
    (
        lambda p: _write(p / "pickled.pt", official_model()),
        "pickled Python objects .it needs torchvision",
    ),
    (lambda p: _write(p / "bare.pt", official_model().state_dict()), "official format"),
    (
        lambda p: _write(p / "plainfc.pt", {"model": torchvision.models.resnet18().state_dict()}),
        "no conv1.weight",
    ),
    (
        lambda p: _write(p / "extra.pt", {"model": {**official_model().state_dict(), "x": torch.zeros(1)}}),
        "unexpected",
    ),
    (
        lambda p: _write(
            p / "shape.pt", {"model": {**official_model().state_dict(), "fc.0.bias": torch.zeros(7)}}
        ),
        "shape mismatch at fc.0.bias",
    ),
]
LOAD_ERROR_IDS = [
    "missing",
    "junk",
    "empty",
    "truncated",
    "pickled_model",
    "bare_state_dict",
    "plain_fc",
    "extra_key",
    "shape",
]


@pytest.mark.parametrize(("make", "match"), LOAD_ERRORS, ids=LOAD_ERROR_IDS)
def test_load_errors_are_one_line(tmp_path, make, match, recwarn):
    path = make(tmp_path)
    with pytest.raises(EvaluatorError, match=match) as info:
        Evaluator.load(path, device="cpu")
    assert "\n" not in str(info.value) and str(path) in str(info.value) and "\x1b" not in str(info.value)
    assert not [
        w for w in recwarn if "torch" in str(w.filename)
    ]  # the line says it all, no warning beside it


@pytest.mark.parametrize(("make", "match"), LOAD_ERRORS[1:], ids=LOAD_ERROR_IDS[1:])  # all but "missing"
def test_from_bytes_makes_the_checks_of_load(tmp_path, make, match):
    """What a trial receives through Ray (the file's bytes and its sidecar) is refused as the file would be."""
    data = make(tmp_path).read_bytes()
    with pytest.raises(EvaluatorError, match=match) as info:
        Evaluator.from_bytes(data, name="the search's judge", device="cpu")
    assert "\n" not in str(info.value) and "the search's judge" in str(info.value)


def test_from_bytes_is_load(tmp_path):
    path = Evaluator(ResNet18(n_classes=3, width=8), device="cpu").save(tmp_path / "ev.pt", {"note": 1})
    meta = json.loads(sidecar_path(path).read_text())
    a, b = (
        Evaluator.load(path, device="cpu"),
        Evaluator.from_bytes(path.read_bytes(), meta=meta, device="cpu"),
    )
    assert (a.classes, a.meta, a.width) == (b.classes, b.meta, b.width)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(a.scores(images), b.scores(images))
    with pytest.raises(EvaluatorError, match="width=16"):
        Evaluator.from_bytes(path.read_bytes(), meta={**meta, "width": 16}, device="cpu")


def test_sidecar_that_contradicts_checkpoint_is_refused(tmp_path):
    path = Evaluator(ResNet18(n_classes=3, width=8), device="cpu").save(tmp_path / "ev.pt", {})
    meta = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps({**meta, "n_classes": 4}))
    with pytest.raises(EvaluatorError, match="n_classes=4"):
        Evaluator.load(path, device="cpu")


# -- Frechet distance ------------------------------------------------------------------------------------


def test_frechet_distance_zero_for_same_set_and_grows_with_shift():
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    d = [frechet_distance(x, x + s) for s in (0.1, 0.5, 1.0, 2.0)]
    assert d == sorted(d) and d[0] > 0
    assert d[-1] == pytest.approx(16 * 2.0**2, rel=1e-6)  # pure shift: |mu1 - mu2|^2


def test_frechet_distance_closed_form_and_reference():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    mu = rng.normal(size=6)
    from trainers.evaluator.metrics import FeatureStats

    s1, s2 = FeatureStats(np.zeros(6), np.diag(a), 0), FeatureStats(mu, np.diag(b), 0)
    assert frechet_distance(s1, s2) == pytest.approx(mu @ mu + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + 1
    fx, fy = feature_stats(x), feature_stats(y)
    covmean = scipy.linalg.sqrtm(fx.sigma @ fy.sigma).real  # pytorch-fid's formula
    ref = np.sum((fx.mu - fy.mu) ** 2) + np.trace(fx.sigma) + np.trace(fy.sigma) - 2 * np.trace(covmean)
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_singular_covariances():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5  # fewer samples than dimensions
    d = frechet_distance(x, y)
    assert math.isfinite(d) and d > 0 and frechet_distance(x, x) == pytest.approx(0, abs=1e-6)


# -- fitting, on digits (the fast real dataset) ----------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from trainers.data import load_dataset

    return load_dataset("digits", size=16)


@pytest.fixture(scope="module")
def digits_evaluator(digits):
    torch.manual_seed(0)
    cfg = FitConfig(width=8, epochs=4, batch_size=64, lr=5e-3)
    ev, report = fit(
        digits.images, digits.labels, classes=digits.classes, config=cfg, device="cpu", progress=False
    )
    return ev, report


def test_fit_on_digits_learns(digits_evaluator):
    ev, report = digits_evaluator
    assert report["heldout_acc"] > 0.8, report["history"]
    assert report["split"] == "image" and report["n_train"] + report["n_val"] == 1797
    assert set(report["per_class_f1"]) == set(ev.classes) and not ev.net.training


def test_fit_warm_start_keeps_what_init_learned(digits, digits_evaluator):
    ev, report = digits_evaluator
    # a learning rate too small to move the weights: the warm start alone must carry the accuracy
    still = FitConfig(width=8, epochs=1, batch_size=64, lr=1e-12)
    kwargs = dict(classes=digits.classes, config=still, device="cpu", progress=False)
    warm, warm_report = fit(digits.images, digits.labels, init=ev, **kwargs)
    cold, cold_report = fit(digits.images, digits.labels, **kwargs)
    assert torch.allclose(warm.net.conv1.weight, ev.net.conv1.weight, atol=1e-6)
    assert warm_report["heldout_acc"] > 0.8 > 0.3 > cold_report["heldout_acc"]
    with pytest.raises(ValueError, match="init evaluator is width 8"):
        fit(digits.images, digits.labels, init=ev, **{**kwargs, "config": FitConfig(width=16, epochs=1)})


def test_split_by_scene_keeps_scenes_whole():
    files = [f"CLEVR_train_{s:06d}_{k}.png" for s in range(50) for k in range(3)]
    train, val, how = split_indices(files, len(files), val_fraction=0.2, seed=0)
    scene = np.array([f[12:18] for f in files])
    assert how == "scene" and len(val) == 30 and not set(scene[train]) & set(scene[val])
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(150))
    _, val2, how2 = split_indices([f"img_{i}.png" for i in range(150)], 150, val_fraction=0.2, seed=0)
    assert how2 == "image" and len(val2) == 30


def test_augment_keeps_pixels_and_flips_exactly():
    x = torch.rand(8, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    flipped = augment(x, max_shift=0, flip=True, generator=gen)
    for a, b in zip(x, flipped, strict=True):
        assert torch.equal(b, a) or torch.equal(b, a.flip(-1))
    shifted = augment(x, max_shift=3, flip=False, generator=gen)
    assert all(set(s.unique().tolist()) <= set(a.unique().tolist()) for a, s in zip(x, shifted, strict=True))


# -- the evaluation protocol -----------------------------------------------------------------------------


def lookup_generator(images: np.ndarray, labels: np.ndarray, *, collapsed: bool = False):
    """A 'generator' that returns real images of the asked class, picked with the given noise generator."""
    real = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W)
    by_class = [np.flatnonzero(labels[:, c]) for c in range(labels.shape[1])]
    calls = []

    def generate(cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        calls.append((cond.device, gen.device, gen.initial_seed()))
        picks = []
        for c in cond.argmax(1).tolist():
            j = 0 if collapsed else int(torch.randint(len(by_class[c]), (1,), generator=gen))
            picks.append(by_class[c][j])
        return real[picks]

    generate.calls = calls
    return generate


def noise_generator(cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(len(cond), 3, 16, 16, generator=gen) * 2 - 1


def test_evaluate_generator_protocol(digits, digits_evaluator):
    ev, _ = digits_evaluator
    conditions = {
        "digits": np.eye(10, dtype=np.float32),
        "twice": np.eye(10, dtype=np.float32)[[1, 2, 3] * 3],
    }
    good = lookup_generator(digits.images, digits.labels)
    real = digits.images[:400]
    res = evaluate_generator(good, ev, conditions, real=real, n_draws=4, seed=0, batch_size=8)
    assert set(res) == {"acc_digits", "acc_twice", "acc", "acc_std", "fid", "diversity"}
    assert res["acc"] == pytest.approx((res["acc_digits"] + res["acc_twice"]) / 2)
    assert res["acc"] > 0.7 and res["diversity"] > 0 and res["acc_std"] >= 0
    # fixed noise: identical result, CPU generators, labels on the evaluator's device, chunks of batch_size
    assert evaluate_generator(good, ev, conditions, real=real, n_draws=4, seed=0, batch_size=8) == res
    assert {(d.type, g.type) for d, g, _ in good.calls} == {("cpu", "cpu")}
    assert len({s for *_, s in good.calls}) == 4 * 2  # one seed per (draw, condition set)
    # a collapsed generator scores the same kind of accuracy but no diversity
    collapsed = evaluate_generator(
        lookup_generator(digits.images, digits.labels, collapsed=True), ev, conditions
    )
    assert collapsed["diversity"] == pytest.approx(0, abs=1e-6) and collapsed["acc_std"] == 0
    assert math.isnan(collapsed["fid"])
    # noise: chance-level accuracy, FID far above that of real images
    noise = evaluate_generator(noise_generator, ev, conditions, real=real, n_draws=4)
    assert noise["acc"] < 0.4 and noise["fid"] > 3 * res["fid"]


def test_evaluate_generator_real_formats_and_single_draw(digits, digits_evaluator):
    ev, _ = digits_evaluator
    cond = {"digits": np.eye(10, dtype=np.float32)}
    gen = lookup_generator(digits.images, digits.labels)
    real_u8 = digits.images[:200]
    real_f = torch.as_tensor(real_u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    a = evaluate_generator(gen, ev, cond, real=real_u8, n_draws=1)
    b = evaluate_generator(gen, ev, cond, real=real_f, n_draws=1)
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-5)
    assert a["acc_std"] == 0 and math.isnan(a["diversity"])


@pytest.mark.parametrize(
    ("generate", "conditions", "match"),
    [
        (lambda c, g: torch.zeros(len(c), 16, 16), {"d": np.eye(10)}, "generate returned"),
        (noise_generator, {"d": np.eye(5)}, r"\(N, 10\)"),
    ],
)
def test_evaluate_generator_rejects_bad_input(digits_evaluator, generate, conditions, match):
    with pytest.raises(ValueError, match=match):
        evaluate_generator(generate, digits_evaluator[0], conditions, n_draws=1)


# -- the guard ---------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    ev = Evaluator(ResNet18(n_classes=3, width=8), device="cpu")
    return ev.save(tmp_path / "ev.pt", {"heldout_acc": 0.95, "data_fingerprint": "fp-good"})


def test_check_evaluator_accepts(saved):
    assert check_evaluator(saved, data_fingerprint="fp-good")["heldout_acc"] == 0.95
    assert check_evaluator(saved, data_fingerprint=None, floor=0.95)["width"] == 8


@pytest.mark.parametrize(
    ("change", "kwargs", "needles"),
    [
        ("none", {"data_fingerprint": "fp-good", "floor": 0.99}, ["0.9500", "0.9900", "below the floor"]),
        ("none", {"data_fingerprint": "fp-other"}, ["fingerprint mismatch", "fp-good", "fp-other"]),
        ("no_sidecar", {"data_fingerprint": None}, ["missing sidecar"]),
        ("stale_sidecar", {"data_fingerprint": None}, ["sha256 mismatch"]),
        ("no_checkpoint", {"data_fingerprint": None}, ["no such checkpoint"]),
    ],
)
def test_check_evaluator_refuses(saved, change, kwargs, needles):
    if change == "no_sidecar":
        sidecar_path(saved).unlink()
    elif change == "stale_sidecar":
        Evaluator(ResNet18(n_classes=3, width=8), device="cpu").save(saved.with_name("other.pt"))
        saved.write_bytes(saved.with_name("other.pt").read_bytes())
    elif change == "no_checkpoint":
        saved.unlink()
    with pytest.raises(EvaluatorError) as info:
        check_evaluator(saved, **kwargs)
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in msg and saved.name in msg
    assert all(n in msg for n in needles), msg


# -- command line ------------------------------------------------------------------------------------------


def test_cli_fit_and_score_digits(tmp_path, capsys):
    out = tmp_path / "digits.pt"
    args = ["--data", "digits", "--size", "16", "--out", str(out), "--width", "8", "--epochs", "1"]
    assert main(["fit", *args, "--max-train", "128", "--threads", "1"]) == 0
    meta = json.loads(sidecar_path(out).read_text())
    for key in (
        "data_fingerprint",
        "n_classes",
        "classes",
        "resolution",
        "width",
        "heldout_acc",
        "per_class_f1",
    ):
        assert key in meta
    for key in (
        "epochs",
        "n_train",
        "n_val",
        "train_seconds",
        "device",
        "torch_version",
        "checkpoint_sha256",
    ):
        assert key in meta
    assert meta["resolution"] == 64 and meta["n_classes"] == 10 and not list(tmp_path.glob("*.tmp"))
    assert check_evaluator(out, data_fingerprint=meta["data_fingerprint"], floor=0.0) == meta
    capsys.readouterr()
    assert main(["score", "--evaluator", str(out), "--data", "digits", "--size", "16"]) == 0
    assert capsys.readouterr().out.startswith("accuracy ")


def test_cli_fit_init_records_lineage_and_refuses_its_own_data(tmp_path, capsys):
    base = tmp_path / "base.pt"
    common = ["--data", "digits", "--epochs", "1", "--max-train", "128", "--threads", "1"]
    assert main(["fit", *common, "--size", "16", "--width", "8", "--out", str(base)]) == 0
    base_meta = json.loads(sidecar_path(base).read_text())
    capsys.readouterr()
    # the same data: its held-out images were trained on, so the warm start is refused
    assert main(["fit", *common, "--size", "16", "--init", str(base), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "very dataset" in err and str(base) in err
    assert main(["fit", *common, "--size", "8", "--init", str(base), "--width", "16"]) == 2
    assert "contradicts" in capsys.readouterr().err
    # other data (here: another resolution, so another fingerprint): width comes from --init
    warm = tmp_path / "warm.pt"
    assert main(["fit", *common, "--size", "8", "--init", str(base), "--out", str(warm)]) == 0
    meta = json.loads(sidecar_path(warm).read_text())
    assert meta["width"] == 8 and meta["data_fingerprint"] != base_meta["data_fingerprint"]
    assert meta["init"]["checkpoint_sha256"] == base_meta["checkpoint_sha256"]
    assert meta["init"]["heldout_acc"] == base_meta["heldout_acc"] and meta["init"]["path"] == str(base)


@pytest.mark.parametrize("bad", ["missing", "format"])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, bad):
    path = tmp_path / "ev.pt"
    if bad == "format":
        torch.save({"weights": {}}, path)
    assert main(["score", "--evaluator", str(path), "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err


def test_cli_entry_point_and_no_heavy_imports(tmp_path):
    """One interpreter: importing the API pulls in no ray/mlflow/data stack; the real entry point exits 2."""
    code = (
        "import sys, runpy, trainers.evaluator;"
        "heavy = ('ray', 'mlflow', 'trainers.data');"
        "print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy)), flush=True);"
        f"sys.argv = ['x', 'score', '--evaluator', {str(tmp_path / 'x.pt')!r}, '--data', 'digits'];"
        "runpy.run_module('trainers.evaluator', run_name='__main__', alter_sys=True)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.stdout.strip() == "[]"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "x.pt" in proc.stderr


# -- a judge measured, not trusted ---------------------------------------------------------------------------


def test_stratified_sample_is_fixed_proportional_and_covers_every_class():
    rng = np.random.default_rng(1)
    n, c = 2000, 24
    k = rng.choice([1, 2, 3], size=n)  # 1-, 2- and 3-object images
    labels = np.zeros((n, c), dtype=np.float32)
    for i in range(n):
        labels[i, rng.choice(c, size=k[i], replace=False)] = 1
    labels[:, 23] = 0
    labels[[5, 900], 23] = 1  # a rare class: two images in 2,000
    idx = stratified_sample(labels, 300)
    assert len(idx) == 300 == len(set(idx.tolist())) and (np.diff(idx) > 0).all()
    assert (idx == stratified_sample(labels, 300)).all()  # the same data, the same images
    assert not (idx == stratified_sample(labels, 300, seed=1)).all()
    for objects in (1, 2, 3):  # each label count within a few images of its share
        want = 300 * (labels.sum(1) == objects).mean()
        assert abs((labels[idx].sum(1) == objects).sum() - want) <= 3
    assert (labels[idx].sum(0) > 0).all()  # the rare class too
    assert (stratified_sample(labels, 5000) == np.arange(n)).all()


def _official(path, *, n_classes=24, width=4, seed=0):
    """An official-format judge: {"model": state_dict} and nothing else, no sidecar."""
    torch.manual_seed(seed)
    torch.save({"model": ResNet18(n_classes=n_classes, width=width).state_dict()}, path)
    return path


@pytest.fixture
def folder(tmp_path):
    from tests.conftest import make_iclevr_folder  # RGBA noise in the i-CLEVR layout, 24 classes

    return make_iclevr_folder(tmp_path / "ds")


def test_calibrate_measures_on_the_judges_resolution_and_caches(tmp_path, folder):
    path = _official(tmp_path / "official.pt")
    data = judge_data(folder, progress=False)
    assert data.size == 64
    first = calibrate(path, data, data_spec=str(folder), cache_dir=tmp_path / "cache", progress=False)
    ev = Evaluator.load(path, device="cpu")
    want = ev.accuracy(torch.as_tensor(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1, data.labels)
    assert first["acc"] == pytest.approx(want) and not first["cached"]
    assert first["n"] == first["n_data"] == 5 and first["data_fingerprint"] == data.fingerprint
    assert first["classes"][0] == "gray cube" and first["n_classes"] == 24  # objects.json order
    assert set(first["acc_by_objects"]) == {"1", "2", "3"}
    again = calibrate(path, data, data_spec=str(folder), cache_dir=tmp_path / "cache", progress=False)
    assert again["cached"] and again["acc"] == first["acc"] and again["cache"] == first["cache"]
    assert "5 labelled images" in describe(first) and "look better than it is" in describe(first)


@pytest.mark.parametrize(
    ("judge", "needles"),
    [
        ({"n_classes": 10}, ["10 outputs", "24 classes", "official.pt", "ds"]),
        ({"classes": "reversed"}, ["its sidecar", "output 0 is 'yellow cylinder'", "'gray cube'"]),
    ],
)
def test_a_judge_for_other_classes_is_refused_naming_both(tmp_path, folder, judge, needles):
    path = _official(tmp_path / "official.pt", n_classes=judge.get("n_classes", 24))
    if judge.get("classes") == "reversed":
        from trainers.data import load_vocab

        sidecar_path(path).write_text(
            json.dumps({"classes": list(load_vocab(folder / "objects.json"))[::-1]})
        )
    data = judge_data(folder, progress=False)
    with pytest.raises(EvaluatorError) as info:
        calibrate(path, data, data_spec=str(folder), cache_dir=tmp_path / "cache", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("sidecar", ["none", "other_data", "this_data", "stale"])
def test_measured_judge_trusts_only_a_record_of_this_data(tmp_path, folder, sidecar):
    """The search's guard: a sidecar of this very data stands; none, or one of other data, means measuring."""
    from trainers.data import load_dataset

    data = load_dataset(folder, size=16, progress=False)  # as the search loads it, at its training size
    path = tmp_path / "judge.pt"
    if sidecar == "none":
        _official(path)
    else:
        fp = data.fingerprint if sidecar == "this_data" else "fp-other"
        judge = Evaluator(ResNet18(n_classes=24, width=4), classes=data.classes, device="cpu")
        judge.save(path, {"heldout_acc": 0.97, "data_fingerprint": fp})
        if sidecar == "stale":
            _official(path, seed=1)
    logs = []
    kwargs = dict(data_spec=str(folder), floor=0.0, cache_dir=tmp_path / "cache", log=logs.append)
    if sidecar == "stale":
        with pytest.raises(EvaluatorError, match="another checkpoint.*delete it to have the judge measured"):
            measured_judge(path, data, **kwargs)
        return
    meta = measured_judge(path, data, **kwargs)
    if sidecar == "this_data":
        assert (meta["judge_acc"], meta["judge_acc_source"]) == (0.97, "held-out") and not logs
        return
    assert meta["judge_acc_source"] == "calibrated" and "heldout_acc" not in meta
    assert (
        meta["calibration"]["n"] == 5
        and meta["checkpoint_sha256"] == meta["calibration"]["checkpoint_sha256"]
    )
    assert meta["classes"][0] == "gray cube"  # what the trials rebuild the judge with
    said = " ".join(logs)
    assert ("no sidecar" if sidecar == "none" else "other data") in said and "floor 0.000 is applied" in said
    assert "5 labelled images" in said and "look better than it is" in said
    with pytest.raises(EvaluatorError) as info:  # the floor applies to the measured figure
        measured_judge(path, data, **{**kwargs, "floor": 0.99})
    msg = str(info.value)
    assert f"{meta['judge_acc']:.3f}" in msg and "below the floor 0.990" in msg and "\n" not in msg


def test_cli_calibrate_writes_the_searchs_cache(tmp_path, folder, capsys, monkeypatch):
    monkeypatch.setenv("CGAN_SEARCH_HOME", str(tmp_path / "home"))
    path = _official(tmp_path / "official.pt")
    assert main(["calibrate", "--evaluator", str(path), "--data", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "official.pt: top-k accuracy" in out and "cached in" in out
    assert len(list(calibration_dir(tmp_path / "home").glob("*.json"))) == 1
    assert main(["calibrate", "--evaluator", str(path), "--data", str(folder)]) == 0
    assert "read from" in capsys.readouterr().out
    assert main(["calibrate", "--evaluator", str(path), "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "24 outputs" in err and "digits has 10 classes" in err
