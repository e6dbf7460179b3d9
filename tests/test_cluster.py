"""The documented cluster command: `ray job submit --working-dir . -- python search/clevr.py` against a local
head this test starts (token auth, 127.0.0.1, its own ports and temp dir) and stops by pid."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_search_support import ROOT, children_of, kill_pids, mlflow_runs, tune_trials

BIN = Path(sys.executable).parent  # ray and python of this environment


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def head(tmp_path_factory):
    """A local Ray head with token auth; yields the dashboard (jobs API) address."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    gcs, dash, client, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = free_ports(9)
    # A token of its own: on a fresh machine there is no ~/.ray/auth_token yet, and `ray start` with token auth
    # refuses to start without one (only ray.init() writes that file).
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    log = (tmp_path_factory.mktemp("head") / "head.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
         "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
         "--metrics-export-port", str(metrics), "--node-manager-port", str(node_mgr),
         "--object-manager-port", str(obj_mgr), "--num-cpus", "2", "--temp-dir", temp_dir,
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    spawned: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while True:  # the jobs API answers once the dashboard is up
            spawned.update(children_of(proc.pid))
            probe = subprocess.run(
                [str(BIN / "ray"), "job", "list", "--address", address],
                env=env,
                capture_output=True,
                timeout=60,
            )
            if probe.returncode == 0:
                break
            assert proc.poll() is None, f"ray start exited with {proc.returncode}"
            assert time.monotonic() < deadline, probe.stderr.decode()[-2000:]
            time.sleep(2)
        yield address, env
    finally:
        spawned.update(children_of(proc.pid))
        proc.send_signal(signal.SIGTERM)  # --block: the head stops the processes it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        kill_pids([proc.pid, *spawned])  # and anything that outlived it, by pid
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def tracking_server(tmp_path_factory):
    """infra/mlflow-server.sh on a free port; yields its http:// URI."""
    (port,) = free_ports(1)
    folder = tmp_path_factory.mktemp("mlflow-server")
    log = (folder / "server.log").open("w")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [str(ROOT / "infra" / "mlflow-server.sh"), "--port", str(port), "--home", str(folder)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    spawned: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while True:
            spawned.update(children_of(proc.pid))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, (folder / "server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the MLflow server did not start"
                time.sleep(1)
        yield uri
    finally:
        spawned.update(children_of(proc.pid))
        kill_pids([proc.pid, *spawned], signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            kill_pids([proc.pid, *spawned])
        log.close()


@pytest.mark.slow
def test_ray_job_submit_runs_the_smoke_search_and_results_land_where_configured(
    head, tracking_server, tmp_path_factory
):
    """The job logs to an MLflow tracking server over HTTP (infra/mlflow-server.sh) and keeps its Tune
    results in the --storage it was given."""
    address, env = head
    home = tmp_path_factory.getbasetemp() / "search-home"  # shared caches with the other search tests
    home.mkdir(exist_ok=True)
    storage, tracking = home / "job-results", tracking_server
    runtime_env = f'{{"env_vars": {{"CGAN_SEARCH_HOME": "{home}"}}}}'
    out = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
         "--runtime-env-json", runtime_env, "--",
         "python", "search/clevr.py", "--smoke-test", "--experiment", "job",
         "--storage", str(storage), "--tracking-uri", tracking],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert out.returncode == 0 and "succeeded" in out.stdout, out.stdout[-4000:] + out.stderr[-2000:]
    assert "[search] best trial" in out.stdout  # the job's driver output streams back
    trials = tune_trials(storage / "job")
    assert len(trials) >= 6 and all(trials.values())
    client, parents, children = mlflow_runs(home, "job", tracking_uri=tracking)
    assert len(parents) == 1 and len(children) == len(trials)
    # Uploaded through the server: grids by every trial; the generator by the trials that ran to the end
    # (a pruned trial keeps none by default: the disk stays bounded per search).
    finished = [c for c in children if c.data.tags.get("optuna.state") == "COMPLETE"]
    assert finished
    for child in children:
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "grids" in artifacts
        assert ("checkpoint" in artifacts) == (child in finished), (child.data.tags, artifacts)
    # The job's working dir was a temporary copy: nothing may have been written relative to it.
    assert parents[0].data.tags["search.experiment_dir"] == f"{storage}/job"


def test_cluster_yaml_is_valid_for_ray_up():
    """infra/ray-cluster.yaml passes the cluster launcher's own schema (as `ray up` checks it)."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "infra" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert commands.count("RAY_AUTH_MODE=token") == 2  # token auth on every node, explicitly
    assert "~/.ray/auth_token" in config["file_mounts"]
