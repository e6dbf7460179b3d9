"""A trial's training configuration: a frozen dataclass built from a (sampled or YAML) dict.

Only data-independent choices live here; image size and class count come from the data when the networks
are built. Every default says why it is the default. All compatibility rules are in `validate()`, which
runs on construction, so a `TrainConfig` that exists is one that can be trained.

D's normalisation and spectral normalisation are separate choices (`d_norm`, `d_spectral`; `g_norm`,
`g_spectral`): a norm layer rescales activations, spectral norm rescales each weight matrix by its largest
singular value, and a recipe may want either, both or neither (SNGAN: spectral and no norm; a spectral D
with layer norm is also a valid critic). Older configs and the shipped spaces spell "no norm + spectral
weights in D" as `d_norm: spectral`; `from_dict` reads that spelling (`upgrade_legacy`), so their
checkpoints load and their searches draw the same parameters.

Layering: this module imports the data leaves only: `trainers.choices` (every axis's names, and the loss
terms the rules read), `trainers.models.archs` (what each architecture is) and `trainers.registry`; not
torch, nor any module that implements a choice (each implementation registry is checked one to one against
`trainers.choices` when it is imported). Networks are built from a config in `trainers.build`, trained in
`trainers.step`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from trainers.choices import (
    D_CONDITIONING,
    D_NORMS,
    G_CONDITIONING,
    G_NORMS,
    INITS,
    LOSSES,
    OPTIMIZERS,
    parse_policy,
    split_d_cond,
)
from trainers.models.archs import ARCHITECTURES
from trainers.registry import ConfigError, lookup

__all__ = [
    "ConfigError",
    "PRESETS_DIR",
    "PRESET_ALIASES",
    "TrainConfig",
    "legacy_spelling",
    "load_preset",
    "preset_names",
    "upgrade_legacy",
]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "spaces" / "presets"
# Former preset names, still accepted (run folders, scripts and notes may hold them): old -> current.
PRESET_ALIASES = {"dcgan_bce": "dcgan_nonsat"}  # it always trained loss nonsat, never bce


@dataclass(frozen=True)
class TrainConfig:
    # --- The recipe's defining choices: no default, a trial must say what it trains. ---
    arch: str  # ARCHITECTURES: dcgan, sagan, resnet, infogan
    loss: str  # LOSSES: bce, nonsat, wgan, wgan_gp, hinge
    g_cond: str  # G_CONDITIONING: none, concat, embed, cbn
    d_cond: str  # D_CONDITIONING, or an input method + "acgan" (e.g. channel+acgan)

    # --- Networks ---
    d_norm: str = "batch"  # DCGAN's choice; WGAN-GP wants layer/instance, SNGAN none (with d_spectral)
    d_spectral: bool = False  # off as in DCGAN; SNGAN / SAGAN bound D's Lipschitz constant with it
    g_norm: str = "batch"  # DCGAN's choice; cbn requires it (cbn is a conditional batch norm)
    g_spectral: bool = False  # off as in DCGAN and SNGAN; SAGAN found it steadies G as well
    width: int = 64  # DCGAN's ngf = ndf = 64 at 64x64
    z_dim: int = 128  # SNGAN / BigGAN noise size; DCGAN's 100 performs the same
    embed_dim: int = 100  # label embedding for embed, cbn and late; the SAGAN report used 100
    attn_res: int = 16  # SAGAN: attention on larger maps did better; 16 exists at 32x32 and 64x64
    g_dropout: float = 0.0  # off: DCGAN has none; > 0 adds pix2pix-style dropout noise to G's blocks
    init: str = "dcgan"  # N(0, 0.02) as in DCGAN; "orthogonal" for SNGAN / BigGAN recipes

    # --- Optimisation ---
    batch_size: int = 64  # DCGAN / SNGAN batch; fits CPU tests and a fraction of a GPU
    optimizer: str = "adam"  # Adam for everything but weight-clipped WGAN (RMSprop)
    lr_g: float = 2e-4  # DCGAN paper
    lr_d: float = 2e-4  # equal to lr_g unless a TTUR recipe (Heusel et al. 2017) sets it higher
    beta1: float = 0.5  # DCGAN: 0.9 oscillates
    beta2: float = 0.999  # Adam's default; WGAN-GP recipes use 0.9
    n_critic: int = 1  # D steps per G step; WGAN recipes use 5
    ema: float = 0.0  # decay of an EMA of G's weights, evaluated instead of G; 0 = off, 0.999 typical

    # --- Loss-specific terms (used only by their loss or method) ---
    clip: float = 0.01  # wgan: weight clipping range (Arjovsky et al. 2017)
    gp_lambda: float = 10.0  # wgan_gp: penalty weight (Gulrajani et al. 2017)
    aux_weight: float = 1.0  # acgan: weight of the auxiliary BCE; ACGAN weighs it like the GAN loss
    diffaug: str = ""  # DiffAugment policy, e.g. "color,translation,cutout"; off by default
    flip: bool = False  # off: a mirrored digit is another glyph; the i-CLEVR WGAN-GP report mirrored reals

    # --- InfoGAN codes (arch infogan only; Chen et al. 2016's MNIST setting) ---
    disc_codes: int = 10  # categories of the one discrete code
    cont_codes: int = 2  # continuous codes, uniform in [-1, 1]
    disc_weight: float = 1.0  # weight of the discrete code's cross-entropy
    cont_weight: float = 0.1  # weight of the continuous codes' Gaussian NLL (0.1 in the paper)

    # --- Speed ---
    compile: bool = False  # torch.compile the networks: pays off on long GPU runs only

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a plain dict: unknown keys (with close matches) and missing required keys raise
        ConfigError; numbers are coerced to the field's type where that loses nothing."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in d if k not in fields]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), list(fields), n=1)
                hints.append(f"{k!r}" + (f" (did you mean '{close[0]}'?)" if close else ""))
            raise ConfigError(f"unknown config key(s): {', '.join(hints)}")
        missing = [
            name
            for name, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in d
        ]
        if missing:
            raise ConfigError(f"missing required config key(s): {', '.join(missing)}")
        types = get_type_hints(cls)
        return cls(**{k: _coerce(k, v, types[k]) for k, v in upgrade_legacy(d).items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Every compatibility rule of the family, in one place. Raises ConfigError naming the conflict."""
        arch = lookup(ARCHITECTURES, self.arch, axis="arch")
        lookup(LOSSES, self.loss, axis="loss")
        lookup(G_CONDITIONING, self.g_cond, axis="g_cond")
        if self.d_norm == "spectral":
            raise ConfigError(
                "d_norm 'spectral' is the old spelling of d_norm: none with d_spectral: true "
                "(TrainConfig.from_dict reads it; the constructor takes the current fields)"
            )
        lookup(D_NORMS, self.d_norm, axis="d_norm")
        lookup(G_NORMS, self.g_norm, axis="g_norm")
        lookup(OPTIMIZERS, self.optimizer, axis="optimizer")
        lookup(INITS, self.init, axis="init")
        parse_policy(self.diffaug)
        methods = split_d_cond(self.d_cond)
        for m in methods:
            lookup(D_CONDITIONING, m, axis="d_cond")
        inputs = [m for m in methods if m != "acgan"]
        if len(methods) != len(set(methods)) or len(inputs) > 1 or (len(methods) > 1 and "none" in methods):
            raise ConfigError(
                f"d_cond {self.d_cond!r}: combine at most one of channel, late, projection with acgan "
                "(e.g. 'channel+acgan')"
            )
        loss = LOSSES[self.loss]

        rules = [
            (
                "projection" in methods and "acgan" in methods,
                "d_cond projection+acgan: the projection term and the auxiliary classifier would share one "
                "head; use channel+acgan or late+acgan",
            ),
            (
                loss.clip and self.d_spectral,
                "loss wgan with d_spectral: spectral norm already bounds D's Lipschitz constant, weight "
                "clipping on top only cripples D; use wgan_gp or hinge, or d_spectral: false (a d_norm other "
                "than spectral, in the old spelling)",
            ),
            (
                loss.gp and self.d_norm == "batch",
                "loss wgan_gp with d_norm batch: the gradient penalty is per sample and batch norm mixes "
                "samples (Gulrajani et al. 2017); use layer, instance or none (with or without d_spectral)",
            ),
            (
                arch.spectral and not (self.d_spectral and self.g_spectral),
                f"arch {self.arch} with d_spectral {str(self.d_spectral).lower()}, g_spectral "
                f"{str(self.g_spectral).lower()}: {self.arch} is defined with spectral norm in G and D; set "
                "d_spectral: true and g_spectral: true (d_norm: spectral, in the old spelling), or use arch dcgan",
            ),
            (
                self.g_cond == "cbn" and self.g_norm != "batch",
                f"g_cond cbn with g_norm {self.g_norm}: conditional batch norm is a batch norm; set "
                "g_norm: batch or choose concat/embed",
            ),
            (
                arch.q_head and self.disc_codes + self.cont_codes < 1,
                f"arch {self.arch} needs at least one latent code (disc_codes or cont_codes)",
            ),
            (
                "acgan" in methods and self.aux_weight <= 0,
                "d_cond acgan with aux_weight <= 0 trains no auxiliary classifier; set aux_weight > 0",
            ),
        ]
        for broken, message in rules:
            if broken:
                raise ConfigError(message)

        ranges = [
            ("width", self.width >= 1),
            ("z_dim", self.z_dim >= 1),
            ("embed_dim", self.embed_dim >= 1),
            ("attn_res", self.attn_res >= 8 and self.attn_res & (self.attn_res - 1) == 0),
            ("g_dropout", 0.0 <= self.g_dropout < 1.0),
            ("batch_size", self.batch_size >= 2),  # batch norm needs two samples
            ("lr_g", self.lr_g > 0),
            ("lr_d", self.lr_d > 0),
            ("beta1", 0.0 <= self.beta1 < 1.0),
            ("beta2", 0.0 <= self.beta2 < 1.0),
            ("n_critic", self.n_critic >= 1),
            ("ema", 0.0 <= self.ema < 1.0),
            ("clip", self.clip > 0),
            ("gp_lambda", self.gp_lambda >= 0),
            ("aux_weight", self.aux_weight >= 0),
            ("disc_codes", self.disc_codes >= 0),
            ("cont_codes", self.cont_codes >= 0),
            ("disc_weight", self.disc_weight >= 0),
            ("cont_weight", self.cont_weight >= 0),
        ]
        for name, ok in ranges:
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"{name} = {value!r} is out of range")


def _coerce(name: str, value: Any, kind: type) -> Any:
    """YAML and samplers hand over near-types (1 for 1.0, '1e-4' from PyYAML, 64.0 for 64)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # PyYAML reads 1e-4 (no dot) as a string
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{name} = {value!r}: expected {kind.__name__}")


def upgrade_legacy(d: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict in today's fields. Before d_spectral existed, `d_norm: spectral` meant no norm layer and
    spectral-norm weights in D, and an architecture defined with spectral norm (SAGAN) put it in G as well;
    the shipped spaces still sample that spelling, so that a seed draws what it drew before."""
    d = dict(d)
    if d.get("d_norm") != "spectral":
        return d
    if d.get("d_spectral") is False:
        raise ConfigError("d_norm 'spectral' with d_spectral false: the old spelling means d_spectral true")
    arch = _arch(d)
    d.update(d_norm="none", d_spectral=True)
    if "g_spectral" not in d and arch is not None and arch.spectral:
        d["g_spectral"] = True
    return d


def legacy_spelling(d: Mapping[str, Any]) -> dict[str, tuple[Any, tuple[str, ...]]]:
    """The old spelling of a config dict's values, where it has one: {key: (old value, the other keys that
    value also sets)}. A search space that samples `d_norm` from a list holding `spectral` and does not name
    `d_spectral` reproduces this config only through the old value (`spaces.Space.fit` asks)."""
    arch = _arch(d)
    implied_g = bool(arch is not None and arch.spectral)
    if d.get("d_norm") == "none" and d.get("d_spectral") is True and bool(d.get("g_spectral")) == implied_g:
        return {"d_norm": ("spectral", ("d_spectral", "g_spectral"))}
    return {}


def _arch(d: Mapping[str, Any]):
    """The dict's architecture entry, or None where `arch` is missing or unknown (validate() says so)."""
    name = d.get("arch")
    return ARCHITECTURES.get(name) if isinstance(name, str) else None


def preset_names() -> list[str]:
    """The current preset names (aliases in PRESET_ALIASES load too)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> TrainConfig:
    """The recipe in spaces/presets/NAME.yaml (NAME may be a former name, see PRESET_ALIASES)."""
    path = PRESETS_DIR / f"{PRESET_ALIASES.get(name, name)}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(preset_names())}")
    d = yaml.safe_load(path.read_text())
    try:
        return TrainConfig.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
