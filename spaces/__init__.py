"""Search spaces as YAML data (`spaces/*.yaml`) and the interpreter that turns them into Optuna define-by-run
functions. Format: docs/spaces.md. Check a file against the trainer config: `python -m spaces check FILE`."""

from spaces.space import Fit, Param, Space, SpaceError, load_space

__all__ = ["Fit", "Param", "Space", "SpaceError", "load_space"]
