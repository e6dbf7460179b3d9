"""Helpers shared by the search tests (no tests here): run an entry script as a user would, read MLflow back,
and clean up every process a test started, by pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from infra.processes import children_of  # noqa: F401  (re-exported: tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
SMOKE_SPACE = ROOT / "spaces" / "smoke.yaml"


def search_env(home: Path) -> dict[str, str]:
    """The environment of a search started by a test: its own home, explicit token auth, quiet tqdm."""
    env = {**os.environ, "CGAN_SEARCH_HOME": str(home), "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # never a cluster the developer happens to run
    return env


def search_command(entry: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "search" / f"{entry}.py"), *args]


def run_search(home: Path, *args: str, entry: str = "clevr", cwd: Path | None = None, timeout: float = 300):
    """Run a search to completion in a subprocess (from `cwd`, not the repo: paths must not depend on it)."""
    start = time.monotonic()
    out = subprocess.run(
        search_command(entry, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=search_env(home),
        cwd=cwd or home,
    )
    return out, time.monotonic() - start


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def mlflow_runs(home: Path, experiment: str, tracking_uri: str | None = None):
    """(client, parent runs, child runs) of one experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri or f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("search.role") == "search"]
    children = [r for r in runs if r.data.tags.get("search.role") == "trial"]
    return client, parents, children


def tune_trials(experiment_dir: Path) -> dict[str, list[dict]]:
    """{trial id: its results in order} from the experiment's trial folders."""
    out = {}
    for folder in sorted(experiment_dir.glob("trial_*")):
        lines = (
            (folder / "result.json").read_text().splitlines() if (folder / "result.json").is_file() else []
        )
        out[folder.name.removeprefix("trial_")] = [json.loads(line) for line in lines]
    return out


def write_space(path: Path, **changes: str) -> Path:
    """The smoke space with some parameter lines replaced ("name: yaml value")."""
    lines = []
    for line in SMOKE_SPACE.read_text().splitlines():
        key = line.strip().split(":", 1)[0]
        if line.startswith("  ") and key in changes:
            line = f"  {key}: {changes[key]}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path
