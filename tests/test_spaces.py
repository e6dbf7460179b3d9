"""Search spaces: every shipped file samples valid TrainConfigs, conditionals stay on their branch, the
define-by-run function works in a real Optuna study and in Ray's OptunaSearch, malformed files fail with
one line (through the CLI too), and sampling is deterministic."""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from spaces import SpaceError, load_space
from spaces.check import check_file
from trainers.config import PRESETS_DIR, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "spaces").glob("*.yaml"))
FIXTURES = ROOT / "tests" / "fixtures" / "spaces"
N_SAMPLES = 200

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _samples(space, n=N_SAMPLES):
    return [space.sample(seed) for seed in range(n)]


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("sources: [test]\nparams:\n" + body)
    return path


def test_the_four_spaces_ship():
    assert {p.name for p in SHIPPED} >= {"clevr.yaml", "clevr_narrow.yaml", "smoke.yaml", "digits.yaml"}


# --- shipped spaces ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_samples_are_valid_train_configs(path):
    space = load_space(path)
    assert space.sources and all(s.strip() for s in space.sources)
    assert space.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for seed, config in enumerate(_samples(space)):
        assert set(config) <= set(space.names), seed
        TrainConfig.from_dict(config).validate()  # raises on an unknown key or a broken rule


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_conditionals_exist_only_on_their_branch(path):
    """A conditional key is in the sample exactly when one of its branches' conditions holds, and each key
    that can be absent is seen both present and absent across the samples."""
    space = load_space(path)
    configs = _samples(space)
    for p in space.params:
        for config in configs:
            on = any(all(config.get(k, object()) in allowed for k, allowed in b.when) for b in p.branches)
            assert (p.name in config) == on, (p.name, config)
        if all(b.when for b in p.branches):
            assert {p.name in c for c in configs} == {True, False}, p.name


# Independent of the interpreter: the branch each conditional key of clevr.yaml belongs to, spelled out.
CLEVR_BRANCHES = {
    "gp_lambda": lambda c: c["loss"] == "wgan_gp",
    "clip": lambda c: c["loss"] == "wgan",
    "aux_weight": lambda c: "acgan" in c["d_cond"].split("+"),
    "attn_res": lambda c: c["arch"] == "sagan",
    "beta1": lambda c: c["optimizer"] == "adam",
    "beta2": lambda c: c["optimizer"] == "adam",
    "embed_dim": lambda c: c["g_cond"] in ("embed", "cbn") or c["d_cond"] in ("late", "late+acgan"),
}


def test_clevr_conditionals_follow_the_trainer_rules():
    configs = _samples(load_space(ROOT / "spaces" / "clevr.yaml"))
    for key, on_branch in CLEVR_BRANCHES.items():
        states = {(key in c) == on_branch(c) for c in configs}
        assert states == {True}, key
        assert {key in c for c in configs} == {True, False}, key
    for c in configs:
        if c["arch"] == "sagan":
            assert c["d_norm"] == "spectral"
        if c["loss"] == "wgan":
            assert c["d_norm"] != "spectral" and c["optimizer"] == "rmsprop"
        if c["loss"] == "wgan_gp":
            assert c["d_norm"] != "batch"
        if c["g_cond"] == "cbn":
            assert c["g_norm"] == "batch"
        assert c["d_cond"] != "projection+acgan"
    # every value of every categorical axis is reached
    for key in ("loss", "arch", "d_norm", "g_cond", "d_cond", "optimizer", "diffaug"):
        assert len({c[key] for c in configs}) > 1, key


def test_clevr_is_wide_and_names_every_non_infogan_field():
    space = load_space(ROOT / "spaces" / "clevr.yaml")
    infogan = {"disc_codes", "cont_codes", "disc_weight", "cont_weight"}
    # The spectral choices are reached through d_norm's old spelling (spectral = none + spectral weights),
    # which keeps the space drawing what it drew before they were two fields.
    spelled = {"d_spectral", "g_spectral"}
    fields = set(TrainConfig.__dataclass_fields__) - infogan - spelled - {"compile"}
    assert fields <= set(space.names)
    configs = _samples(space)
    assert {TrainConfig.from_dict(c).d_spectral for c in configs} == {False, True}
    assert {c["arch"] for c in configs} == {"dcgan", "sagan", "resnet"}
    assert {c["loss"] for c in configs} == {"bce", "nonsat", "hinge", "wgan", "wgan_gp"}
    lrs = [c["lr_d"] for c in configs]
    assert min(lrs) < 3e-5 and max(lrs) > 3e-4  # log-uniform over [1e-5, 1e-3]


# --- define-by-run with Optuna and Ray -----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_define_by_run_in_a_real_optuna_study(path):
    """Optuna (TPE, multivariate, grouped) asks exactly the active sampled keys, and keeps one distribution per
    name across trials (it raises otherwise)."""
    space = load_space(path)
    sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, n_startup_trials=5)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for i in range(15):
        trial = study.ask()
        config = space.define_by_run(trial)
        TrainConfig.from_dict(config)
        sampled = {p.name for p in space.params if p.name in config and p.branch(config).sampled}
        assert set(trial.params) == sampled
        assert all(trial.params[k] == config[k] for k in sampled)
        study.tell(trial, float(i % 4))
    assert len(study.trials) == 15


def test_off_branch_parameters_are_never_suggested(tmp_path):
    space = load_space(
        _write(
            tmp_path,
            "  loss: {choice: [hinge, wgan, wgan_gp]}\n"
            "  gp_lambda: {float: [1.0, 20.0], when: {loss: wgan_gp}}\n"
            "  clip: {value: 0.01, when: {loss: [wgan]}}\n"
            "  n_critic: {int: [2, 5], when: {loss: [wgan, wgan_gp]}}\n",
        )
    )
    asked = []

    class Recorder:
        def __init__(self, loss):
            self.loss = loss

        def suggest_categorical(self, name, choices):
            asked.append(name)
            return self.loss

        def suggest_float(self, name, low, high, *, step=None, log=False):
            asked.append(name)
            return low

        def suggest_int(self, name, low, high, *, step=1, log=False):
            asked.append(name)
            return low

    assert space.define_by_run(Recorder("hinge")) == {"loss": "hinge"}
    assert asked == ["loss"]
    assert space.define_by_run(Recorder("wgan")) == {"loss": "wgan", "clip": 0.01, "n_critic": 2}
    assert space.define_by_run(Recorder("wgan_gp")) == {"loss": "wgan_gp", "gp_lambda": 1.0, "n_critic": 2}
    assert asked == ["loss", "loss", "n_critic", "loss", "gp_lambda", "n_critic"]


def test_ray_optuna_search_hands_the_trial_exactly_the_sampled_config():
    """Through Ray's OptunaSearch (its suggest-capturing wrapper and dict merge), the trial config is the full
    TrainConfig dict: sampled values and constants, nothing extra, nothing nested."""
    pytest.importorskip("ray.tune.search.optuna")
    from ray.tune.search.optuna import OptunaSearch

    space = load_space(ROOT / "spaces" / "clevr.yaml")
    searcher = OptunaSearch(space=space.define_by_run, metric="acc", mode="max", seed=0)
    for i in range(8):
        config = searcher.suggest(f"t{i}")
        params = searcher._ot_trials[f"t{i}"].params
        assert config == space.define_by_run(optuna.trial.FixedTrial(params))
        assert set(params) <= set(config) <= set(space.names)
        TrainConfig.from_dict(config)
    pickle.loads(pickle.dumps(searcher))  # Ray saves the searcher, define_by_run included


# --- presets as points of their spaces (warm start) ----------------------------------------------------------

PRESET_SPACES = {
    "wgan_gp_instance": ["clevr.yaml"],
    "sagan_wgan_gp": ["clevr.yaml", "clevr_narrow.yaml"],
    "dcgan_nonsat": ["clevr.yaml"],
    "wgan_clip": ["clevr.yaml"],
    "acgan_wgan_gp": ["clevr.yaml"],
    "infogan_digits": ["digits.yaml"],
}


@pytest.mark.parametrize(
    "preset,space_file",
    [(p, s) for p, files in PRESET_SPACES.items() for s in files],
    ids=lambda x: x,
)
def test_presets_are_points_of_their_space(preset, space_file):
    """Enqueueing `params_for(preset)` makes the next trial train exactly the preset (warm start)."""
    path = PRESETS_DIR / f"{preset}.yaml"
    if not path.is_file():
        pytest.fail(f"preset {preset} is missing ({path})")
    from trainers.config import load_preset

    expected = load_preset(preset)
    space = load_space(ROOT / "spaces" / space_file)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(space.params_for(expected.to_dict()))
    config = space.define_by_run(study.ask())
    assert TrainConfig.from_dict(config) == expected


def test_params_for_names_the_key_outside_the_space():
    space = load_space(ROOT / "spaces" / "smoke.yaml")
    config = space.sample(0)
    assert space.define_by_run(optuna.trial.FixedTrial(space.params_for(config))) == config
    with pytest.raises(SpaceError, match=r"smoke\.yaml:\d+: width: value 64 is outside the space here"):
        space.params_for({**config, "width": 64})
    with pytest.raises(SpaceError, match=r"lr_g: value 0\.5 is outside"):
        space.params_for({**config, "lr_g": 0.5})


# --- the format ----------------------------------------------------------------------------------------------


def test_sampling_is_deterministic_for_a_seed():
    space = load_space(ROOT / "spaces" / "clevr.yaml")
    assert space.sample(7) == space.sample(7)
    assert load_space(space.path).sample(7) == space.sample(7)
    assert len({repr(space.sample(s)) for s in range(20)}) == 20


def test_sampling_is_the_same_in_another_process():
    """No dependence on hash randomisation or process state: two processes print the same sample."""
    cmd = [sys.executable, "-m", "spaces", "sample", "spaces/clevr.yaml", "--seed", "3"]
    outs = {
        subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": h}
        ).stdout
        for h in ("1", "2")
    }
    assert len(outs) == 1 and "loss:" in outs.pop()


def test_ranges_logs_steps_and_constants(tmp_path):
    space = load_space(
        _write(
            tmp_path,
            "  lr: {float: [1e-5, 1e-1], log: true}\n"
            "  drop: {float: [0.0, 0.5], step: 0.1}\n"
            "  z: {int: [16, 256], log: true}\n"
            "  n: {int: [2, 10], step: 4}\n"
            "  flag: {choice: [true, false]}\n"
            "  betas: [0.0, 0.9]\n"
            "  nested: {value: {a: 1}}\n"
            "  only_true: {value: x, when: {flag: true}}\n",
        )
    )
    configs = _samples(space, 300)
    lrs = [c["lr"] for c in configs]
    assert all(1e-5 <= x <= 1e-1 for x in lrs)
    assert sum(x < 1e-3 for x in lrs) > 100  # log-uniform: half the mass below the geometric middle
    assert {round(c["drop"], 9) for c in configs} == {0.0, 0.1, 0.2, 0.3, 0.4, 0.5}
    assert all(isinstance(c["z"], int) and 16 <= c["z"] <= 256 for c in configs)
    assert {c["n"] for c in configs} == {2, 6, 10}
    assert all(("only_true" in c) == (c["flag"] is True) for c in configs)
    configs[0]["betas"].append(1)
    configs[0]["nested"]["a"] = 2
    assert space.sample(0)["betas"] == [0.0, 0.9] and space.sample(0)["nested"] == {"a": 1}
    assert isinstance(configs[0]["lr"], float) and not math.isnan(configs[0]["lr"])


def test_when_lists_and_several_keys(tmp_path):
    space = load_space(
        _write(
            tmp_path,
            "  loss: {choice: [hinge, wgan, wgan_gp]}\n"
            "  arch: {choice: [dcgan, sagan]}\n"
            "  x: {value: 1, when: {loss: [wgan, wgan_gp], arch: dcgan}}\n"
            "  y:\n"
            "    cases:\n"
            "      - {when: {loss: hinge}, value: h}\n"
            "      - {when: {arch: sagan}, choice: [a, b]}\n"
            "  z: {value: 2, when: {x: 1}}\n",  # on a conditional key: absent when x is
        )
    )
    assert space.conditional == ("x", "y", "z")
    for c in _samples(space):
        assert ("x" in c) == (c["loss"] in ("wgan", "wgan_gp") and c["arch"] == "dcgan")
        assert ("z" in c) == ("x" in c)
        if c["loss"] == "hinge":
            assert c["y"] == "h"
        elif c["arch"] == "sagan":
            assert c["y"] in ("a", "b")
        else:
            assert "y" not in c


def test_exponent_floats_load_as_floats(tmp_path):
    space = load_space(_write(tmp_path, "  lr_g: 1e-4\n  lr_d: {float: [1e-5, 2E-3], log: true}\n"))
    assert space.sample(0)["lr_g"] == 1e-4
    assert isinstance(space.sample(0)["lr_d"], float)


def test_space_metadata(tmp_path):
    path = _write(tmp_path, "  b: 1\n  a: {choice: [x, y]}\n")
    space = load_space(path)
    assert space.path == path and space.sources == ("test",)
    assert space.names == ("b", "a") and space.sampled == ("a",)
    assert space.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert issubclass(SpaceError, ValueError)


# --- malformed spaces ----------------------------------------------------------------------------------------

# fixture -> (line, fragments the one-line message must hold: the key and the value)
MALFORMED = {
    "unknown_key.yaml": (5, ["lr_g:", "unknown key 'lg'", "True"]),
    "empty_choice.yaml": (4, ["loss:", "empty choice list", "[]"]),
    "low_gt_high.yaml": (6, ["lr_d:", "low > high", "[0.001, 1e-05]"]),
    "log_low_zero.yaml": (4, ["ema_decay:", "log range needs low > 0", "[0.0, 0.999]"]),
    "when_unknown.yaml": (5, ["gp_lambda:", "unknown parameter 'losss'", "'wgan_gp'"]),
    "when_later.yaml": (4, ["gp_lambda:", "'loss'", "defined later", "'wgan_gp'"]),
    "when_impossible.yaml": (5, ["gp_lambda:", "loss = 'wgan-gp'", "never takes"]),
    "malformed_yaml.yaml": (5, ["malformed YAML", "lr_g: {float: [1.0e-5, 1.0e-3}"]),
    "duplicate_key.yaml": (6, ["duplicate key 'z_dim'", "z_dim: 64"]),
    "no_sources.yaml": (1, ["sources:", "None"]),
    "two_kinds.yaml": (4, ["n_critic:", "exactly one of", "'choice', 'int'"]),
    "int_bounds.yaml": (4, ["n_critic:", "int bounds", "[1, 5.5]"]),
    "cases_domains.yaml": (7, ["d_norm:", "different domains", "'batch'", "'spectral'"]),
    "cases_unreachable.yaml": (6, ["d_norm:", "case 1 has no when"]),
}
# Well-formed files that the trainer config rejects: caught by `check`, not by `load_space`.
REJECTED = {
    "trainer_rejects.yaml": ["TrainConfig rejected it", "arch='sagan'", "d_norm='batch'"],
    "not_a_field.yaml": ["key 'learning_rate'", "not a TrainConfig field"],
}


def test_every_fixture_is_covered():
    assert {p.name for p in FIXTURES.glob("*.yaml")} == set(MALFORMED) | set(REJECTED)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_space_fails_with_one_line(name):
    line, fragments = MALFORMED[name]
    path = FIXTURES / name
    with pytest.raises(SpaceError) as err:
        load_space(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_space_the_trainer_rejects_fails_the_check(name):
    path = FIXTURES / name
    load_space(path)  # well-formed
    with pytest.raises(SpaceError) as err:
        check_file(path, samples=N_SAMPLES)
    message = str(err.value)
    assert message.startswith(f"{path}: sample seed ") and "\n" not in message
    for fragment in REJECTED[name]:
        assert fragment in message, (fragment, message)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spaces", "check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "name",
    [
        "unknown_key.yaml",
        "low_gt_high.yaml",
        "when_unknown.yaml",
        "malformed_yaml.yaml",
        "trainer_rejects.yaml",
    ],
)
def test_cli_fails_with_exit_2_and_one_stderr_line(name):
    result = _cli(f"tests/fixtures/spaces/{name}")
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(
        f"python -m spaces: error: tests/fixtures/spaces/{name}:"
    )  # PROG: error: as every CLI


def test_cli_checks_every_shipped_space():
    result = _cli(*[_rel(p) for p in SHIPPED], "--samples", str(N_SAMPLES))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(SHIPPED)
    for path, line in zip(SHIPPED, lines, strict=True):
        assert line.startswith(f"{_rel(path)}: {N_SAMPLES} configs valid ("), line


def test_fit_is_the_one_answer_for_presets_and_warm_starts():
    space = load_space(ROOT / "spaces" / "smoke.yaml")
    config = space.sample(3)
    assert space.fit(config).point == space.params_for(config)
    assert not space.fit(config).misfits and not space.fit(config).overridden
    off = space.fit({**config, "width": 64, "d_cond": "acgan"})  # a constant differs; a choice is outside
    assert [m.split(": ")[1] for m in off.overridden] == ["width"]
    assert [m.split(": ")[1] for m in off.misfits] == ["d_cond"]
    # Spectral weights without a norm layer: this space spells it d_norm spectral, and samples it so.
    spectral = TrainConfig.from_dict({**config, "d_norm": "spectral"}).to_dict()
    assert spectral["d_norm"] == "none" and space.fit(spectral).point["d_norm"] == "spectral"
    plain = TrainConfig.from_dict({**config, "d_norm": "none"}).to_dict()
    assert space.fit(plain).point["d_norm"] == "none"
