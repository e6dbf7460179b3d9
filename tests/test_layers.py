"""trainers/ in layers: every module imports alone, no import circle, and the config sits below the networks.

The layers (docs/trainers.md): data leaves (registry, choices, models.archs) -> config; implementation
tables (losses, optimizers, augment, models.layers/conditioning/generators/discriminators) keyed by the
names trainers.choices declares -> latent -> build -> step -> checkpoint -> train. A circle among them is
what let importing the config pull in the step; these checks keep it from coming back.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trainers"

# What importing trainers.config may load of trainers: the data it validates against, nothing that
# implements a choice, builds or trains a network.
CONFIG_MAY_IMPORT = {
    "trainers",
    "trainers.config",
    "trainers.registry",
    "trainers.choices",  # every axis's names, the loss terms the rules read, parse_policy, split_d_cond
    "trainers.models",  # the package alone: its __init__ imports none of its modules
    "trainers.models.archs",  # what each architecture is, as data
}
# Named, as issue 14 words it: the step, augmentation, builder, latent and every trainers.models module
# that holds torch.nn code; and the rest above the config or implementing a choice.
NOT_BY_CONFIG = (
    "trainers.step",
    "trainers.augment",
    "trainers.build",
    "trainers.latent",
    "trainers.models.layers",
    "trainers.models.conditioning",
    "trainers.models.generators",
    "trainers.models.discriminators",
    "trainers.losses",
    "trainers.optimizers",
    "trainers.checkpoint",
    "trainers.train",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """The trainers modules `path` imports when it is imported: module-level statements only (an import
    inside a function is deliberately lazy; one under `if TYPE_CHECKING` never runs)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else ():
            if isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names)
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - sub.level + 1], base])
                found.add(base.rstrip("."))
                found.update(f"{base}.{a.name}" for a in sub.names)  # `from pkg import module`
    return {m for m in found if m == "trainers" or m.startswith("trainers.")}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in top_level_imports(path) if m in files} - {name} for name, path in files.items()}


def runnable_modules() -> list[str]:
    """Every trainers module, but those that run inside Blender (they import its bpy)."""
    mods = graph()
    return sorted(
        name
        for name in mods
        if "bpy" not in {a for n in ast.walk(ast.parse((ROOT / _path(name)).read_text())) for a in _names(n)}
    )


def _path(name: str) -> Path:
    p = Path(*name.split("."))
    return p / "__init__.py" if (ROOT / p).is_dir() else p.with_suffix(".py")


def _names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name.split(".")[0] for a in node.names]
    if isinstance(node, ast.ImportFrom) and not node.level and node.module:
        return [node.module.split(".")[0]]
    return []


def test_no_import_circle_among_trainers_modules():
    edges = graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if nxt.startswith(node + "."):
                continue  # a package importing its own submodule is its __init__, not a circle
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    # The graph is real: the layers named in the module doc are edges of it.
    for low, high in [
        ("trainers.registry", "trainers.config"),
        ("trainers.config", "trainers.checkpoint"),
        ("trainers.build", "trainers.step"),
        ("trainers.step", "trainers.checkpoint"),
        # train imports the step and the checkpoint inside its functions (its command line parses before
        # torch loads: tests/test_cli_imports.py), so its module-level edge is the config
        ("trainers.config", "trainers.train"),
    ]:
        assert low in edges[high], (low, high)


SCRIPT = """
import importlib, json, sys
# The config first, in the fresh interpreter: whether it loads torch is only visible before anything else did.
names = json.loads(sys.argv[1])
loaded = {}
for name in names:
    for m in [m for m in sys.modules if m == "trainers" or m.startswith("trainers.")]:
        del sys.modules[m]  # each module alone: nothing of trainers is loaded before it
    importlib.import_module(name)
    loaded[name] = sorted(m for m in sys.modules if m == "trainers" or m.startswith("trainers."))
    if name == "trainers.config":
        loaded["torch after trainers.config"] = "torch" in sys.modules
print(json.dumps(loaded))
"""


def imports_torch(name: str) -> bool:
    """Whether the module's own top-level statements import torch (what implements a layer, loss or step)."""
    tree = ast.parse((ROOT / _path(name)).read_text())
    return "torch" in {a for node in tree.body for sub in ast.walk(node) for a in _names(sub)}


@pytest.mark.slow  # one subprocess: torch, torchvision and ~45 modules imported (12-40 s on 2 shared cores)
def test_each_module_imports_alone_and_the_config_is_below_the_networks():
    modules = runnable_modules()
    assert "trainers.config" in modules and "trainers.train" in modules
    order = ["trainers.config", *(m for m in modules if m != "trainers.config")]
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(order)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = json.loads(run.stdout)
    config = set(loaded["trainers.config"])
    assert config <= CONFIG_MAY_IMPORT, sorted(config - CONFIG_MAY_IMPORT)
    assert not config & set(NOT_BY_CONFIG), sorted(config & set(NOT_BY_CONFIG))
    # Nothing that holds torch code, named above or not, and not torch itself: the config is data.
    assert not {m for m in config if imports_torch(m)}
    assert loaded["torch after trainers.config"] is False
    # The named list holds every trainers.models module with torch code (a new one must be named there).
    assert {m for m in modules if m.startswith("trainers.models.") and imports_torch(m)} <= set(NOT_BY_CONFIG)
    # trainers.models imports none of its modules, so reading a table does not build the networks' code.
    assert loaded["trainers.models"] == ["trainers", "trainers.models"]


def test_every_declared_choice_has_one_implementation_and_no_other():
    """Each axis's names are declared once, in trainers.choices; each implementation registry is keyed by
    exactly those names, in order (trainers.registry.implements checks it at import; this pins it), so the
    tests parametrized over a registry's keys cover every name the config accepts."""
    from trainers import augment, choices, losses, optimizers
    from trainers.models import conditioning, discriminators, generators, layers
    from trainers.models.archs import ARCHITECTURES
    from trainers.registry import implements

    implementations = {
        "LOSSES": losses.LOSSES,
        "OPTIMIZERS": optimizers.OPTIMIZERS,
        "D_NORMS": layers.D_NORMS,
        "G_NORMS": layers.G_NORMS,
        "INITS": layers.INITS,
        "G_CONDITIONING": conditioning.G_CONDITIONING,
        "D_CONDITIONING": conditioning.D_CONDITIONING,
        "AUGMENTS": augment.AUGMENTS,
    }
    declared = {name for name, value in vars(choices).items() if name.isupper() and isinstance(value, dict)}
    assert declared == set(implementations)  # a new axis in the leaf needs its registry here, and the reverse
    for axis, registry in implementations.items():
        assert list(registry) == list(getattr(choices, axis)), axis
    assert all(losses.LOSSES[n].terms is terms for n, terms in choices.LOSSES.items())
    # Architectures are their own leaf; the body families they name are implemented in both networks.
    assert (
        {a.body for a in ARCHITECTURES.values()} == set(generators.G_BODIES) == set(discriminators.D_BODIES)
    )
    with pytest.raises(RuntimeError, match=r"d_norm: the implementations \['batch', 'bacth'\]"):
        implements({"batch": "", "none": ""}, {"batch": 1, "bacth": 2}, axis="d_norm")
