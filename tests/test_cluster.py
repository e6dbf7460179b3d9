"""The search on a real multi-node cluster: infra/local_cluster.py's Ray head plus two worker nodes on 127.0.0.1
(token auth), and its PostgreSQL-backed MLflow server with basic auth. ONE cluster for the module, ONE smoke
search submitted with `ray job submit` (as docs/cluster.md does it), and the faults a long search meets on a
cluster, in that one run: a worker node killed mid-search (raylet, agents and workers, by pid), and later the
tracking server restarted. Plus the cheap refusals (no login, no token) and `ray up`'s YAML schema.

The checks read Tune's own records (each result says which node ran it: search/trial.py) and the MLflow
server over HTTP, never the search's printout alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from infra.local_cluster import BIN, LocalCluster
from infra.processes import wait_until
from tests.test_search_support import ROOT, cmdline, mlflow_runs, tune_trials

SAMPLES, EPOCHS = 4, 6  # every trial runs all its epochs (grace = max): the kill always finds one mid-run


@pytest.fixture(scope="module")
def cluster():
    """The cluster, stopped afterwards however the tests ended; then nothing it started may be running."""
    cluster = LocalCluster(workers=2, cpus_per_worker=1)
    started = time.monotonic()
    with cluster:
        print(f"\n[cluster] up in {time.monotonic() - started:.0f} s\n{cluster.describe()}")
        yield cluster
    assert cluster.pids() == set(), [cmdline(p) for p in cluster.pids()]
    assert not cluster.root.exists()


def submit(cluster: LocalCluster, *args: str, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, *args],  # nothing to upload
        cwd=ROOT, env=env or cluster.env(mlflow=False), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow  # the module's cluster starts first: ~30 s on 2 cores
def test_the_tracking_server_refuses_a_client_without_the_password(cluster):
    url = f"{cluster.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=30)
    assert refused.value.code == 401
    wrong = urllib.request.Request(url, headers={"Authorization": "Basic YWRtaW46bm90LXRoZS1wYXNzd29yZA=="})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=30)
    assert refused.value.code == 401
    # a Host header it was not told about (DNS rebinding) is refused even with the password
    import base64

    login = base64.b64encode(f"{cluster.mlflow_user}:{cluster.mlflow_password}".encode()).decode()
    rebound = urllib.request.Request(url, headers={"Authorization": f"Basic {login}", "Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(rebound, timeout=30)
    assert refused.value.code == 403
    with urllib.request.urlopen(
        urllib.request.Request(url, headers={"Authorization": f"Basic {login}"})
    ) as r:
        assert r.status == 200


@pytest.mark.slow
def test_ray_job_submit_without_the_token_is_refused(cluster, tmp_path):
    env = {**cluster.env(token=False, mlflow=False), "HOME": str(tmp_path)}  # no ~/.ray/auth_token either
    out = submit(cluster, "--", "python", "-c", "print(1)", env=env)
    assert out.returncode != 0 and "authentication token" in (out.stdout + out.stderr).lower(), out
    env["RAY_AUTH_TOKEN"] = "0" * 64  # a wrong one
    out = submit(cluster, "--", "python", "-c", "print(1)", env=env)
    assert out.returncode != 0 and "token" in (out.stdout + out.stderr).lower(), out


@pytest.mark.slow
def test_search_job_spreads_over_nodes_and_survives_a_lost_node_and_a_tracking_restart(
    cluster, tmp_path_factory
):
    home = tmp_path_factory.getbasetemp() / "search-home"  # caches shared with the other search tests
    home.mkdir(exist_ok=True)
    storage, experiment = tmp_path_factory.mktemp("cluster-results"), "cluster"
    exp_dir = storage / experiment
    w1, w2 = cluster.node_id("w1"), cluster.node_id("w2")
    runtime_env = json.dumps({"env_vars": {"CGAN_SEARCH_HOME": str(home)}})  # no credential in it
    log = tmp_path_factory.mktemp("cluster-job") / "job.log"
    with log.open("w") as out:
        job = subprocess.Popen(
            [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", ".",
             "--runtime-env-json", runtime_env, "--",
             "python", "search/clevr.py", "--smoke-test", "--experiment", experiment,
             "--num-samples", str(SAMPLES), "--max-epochs", str(EPOCHS), "--grace-epochs", str(EPOCHS),
             "--max-failures", "2", "--storage", str(storage), "--tracking-uri", cluster.tracking_uri],
            cwd=ROOT, env=cluster.env(mlflow=False), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def results():
            assert job.poll() is None, (
                f"the job ended (rc {job.returncode}) early:\n{log.read_text()[-3000:]}"
            )
            return tune_trials(exp_dir)

        def mid_run_on_w2():
            for tid, rs in results().items():
                if rs and rs[-1].get("node_id") == w2 and 1 <= rs[-1]["epoch"] <= EPOCHS - 2:
                    return tid, rs[-1]["epoch"]
            return None

        victim, epoch_at_kill = wait_until(mid_run_on_w2, timeout=400, what="a trial mid-run on w2", poll=0.2)
        killed = cluster.kill_node("w2")
        print(f"[cluster] killed w2 ({len(killed)} processes) while {victim} was at epoch {epoch_at_kill}")

        def resumed():
            rs = results().get(victim, [])
            return any(r.get("node_id") not in (w2, None) for r in rs)

        wait_until(resumed, timeout=300, what=f"{victim} resumed on another node", poll=0.5)
        started = time.monotonic()
        cluster.tracking.restart(down_s=2)  # the server's runs are in PostgreSQL: nothing is lost with it
        print(f"[cluster] MLflow server down and up again in {time.monotonic() - started:.0f} s")
        job.wait(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    text = log.read_text()
    assert job.returncode == 0 and "succeeded" in text, text[-4000:]
    assert "[search] best trial" in text

    # Tune: exactly SAMPLES trials, all run to the end; they ran on both worker nodes, none on the head.
    trials = tune_trials(exp_dir)
    assert len(trials) == SAMPLES and all(len({r["epoch"] for r in rs}) == EPOCHS for rs in trials.values())
    nodes = {r["node_id"] for rs in trials.values() for r in rs}
    assert {w1, w2} <= nodes and nodes <= {w1, w2}, nodes
    # The victim moved: results on w2, then on w1, resuming after its last checkpoint (not from epoch 1).
    path = [r["node_id"] for r in trials[victim]]
    moved = path.index(w1) if w1 in path else None
    assert path[0] == w2 and moved is not None and set(path[moved:]) == {w1}, path
    assert 1 < trials[victim][moved]["epoch"] <= epoch_at_kill + 1, trials[victim]

    # MLflow, over HTTP with the login, from PostgreSQL: one parent, one run per trial (no duplicate).
    os.environ.update(
        MLFLOW_TRACKING_USERNAME=cluster.mlflow_user, MLFLOW_TRACKING_PASSWORD=cluster.mlflow_password
    )
    try:
        client, parents, children = mlflow_runs(home, experiment, tracking_uri=cluster.tracking_uri)
        assert len(parents) == 1 and len(children) == SAMPLES
        assert sorted(r.data.tags["ray.trial_id"] for r in children) == sorted(trials)
        for run in children:
            tid = run.data.tags["ray.trial_id"]
            assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
            # every epoch Tune recorded is in MLflow once, also those reported while the server restarted
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "acc")]
            assert steps == list(range(1, EPOCHS + 1)), (tid, steps)
            ran_on = run.data.tags["ray.nodes"].split(",")
            assert ran_on == list(dict.fromkeys(r["node_id"] for r in trials[tid])), (tid, ran_on)
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"grids", "checkpoint"} <= artifacts, artifacts  # uploaded through the server's proxy
        victim_run = next(r for r in children if r.data.tags["ray.trial_id"] == victim)
        assert victim_run.data.tags["ray.nodes"] == f"{w2},{w1}"
        assert victim_run.data.tags["search.retries"] == "1"
        leaderboard = Path(client.download_artifacts(parents[0].info.run_id, "leaderboard.csv"))
        logged = [v for r in (*parents, *children) for v in (*r.data.params.values(), *r.data.tags.values())]
        assert parents[0].data.tags["search.experiment_dir"] == str(exp_dir)
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")

    # No credential anywhere: job output, params, tags, the leaderboard, Tune's folder, every log the
    # cluster wrote (Ray's session logs, MLflow's, PostgreSQL's), any command line of its processes.
    for secret in (cluster.mlflow_password, cluster._admin_password, cluster.token):
        assert secret not in text
        assert [v for v in logged if secret in v] == []
        assert secret not in leaderboard.read_text()
        files = [f for f in (*exp_dir.rglob("*"), *cluster.root.rglob("*.log*"), *cluster.root.rglob("*.out"),
                             *cluster.root.rglob("*.err")) if f.is_file()]  # fmt: skip
        assert files and [f for f in files if secret.encode() in f.read_bytes()] == []
        assert [p for p in cluster.pids() if secret in cmdline(p)] == []


@pytest.mark.slow
def test_the_cluster_cli_stops_everything_it_started_on_ctrl_c(tmp_path):
    """`python -m infra.local_cluster` as a demo runs it: it prints the addresses, then Ctrl-C ends every
    process it started (found by the marker in their environment, so reparented ones too)."""
    from infra.processes import MARKER, children_of, marked

    def start() -> tuple[subprocess.Popen, list[str]]:
        cli = subprocess.Popen(
            [sys.executable, "-m", "infra.local_cluster", "--workers", "1", "--no-tracking"],
            cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        lines = []
        for line in cli.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        else:  # output ended: the CLI is exiting
            cli.wait(timeout=120)
        return cli, lines

    cli, lines = start()
    if cli.poll() is not None:
        # A node that failed to start (seen once in a fresh-clone run) must end as one line and exit 1, with
        # nothing left behind; then the Ctrl-C path is checked on a second start.
        errors = [x for x in lines if x.startswith("python -m infra.local_cluster: error: ")]
        assert cli.returncode == 1 and len(errors) == 1 and not any("Traceback" in x for x in lines), lines
        cli, lines = start()
    try:
        assert any("ray job submit --address http://127.0.0.1:" in x for x in lines), lines
        environ = Path(f"/proc/{children_of(cli.pid)[0]}/environ").read_bytes().split(b"\0")
        marker = next(v for v in environ if v.startswith(MARKER.encode() + b"=")).split(b"=", 1)[1].decode()
        assert len(marked(marker)) >= 4  # ray start x2, GCS, raylets, agents, ...
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=120) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
    assert marked(marker) == []


def tracking_cli(*args: str, password: str | None, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"}
    if password is not None:
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "infra.tracking_server", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    "password, args, message",
    [
        (None, [], "set MLFLOW_AUTH_ADMIN_PASSWORD or pass --admin-password-file"),
        ("short", [], "at least 12 characters"),
        (
            None,
            ["--admin-password-file", "/nonexistent/pw"],
            "--admin-password-file /nonexistent/pw: No such file",
        ),
        ("long-enough-password", ["--pgdata", "{tmp}/db"], "cannot enter"),
    ],
    ids=["no password", "short password", "missing password file", "pgdata the postgres user cannot reach"],
)
def test_the_tracking_server_cli_refuses_bad_setups_in_one_line(password, args, message, tmp_path):
    """Before anything starts: one line on stderr, exit 2, and the password (when given) not in it."""
    if "--pgdata" in args and os.geteuid() != 0:
        pytest.skip("only root hands PostgreSQL to the postgres user")
    args = [
        a.replace("{tmp}", str(tmp_path)) for a in args
    ]  # pytest's temp dirs are 0700: closed to postgres
    out = tracking_cli("--home", str(tmp_path / "server"), *args, password=password, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == "", out
    assert len(out.stderr.splitlines()) == 1 and message in out.stderr, out.stderr
    assert not password or password not in out.stderr


def test_cluster_yaml_is_valid_for_ray_up():
    """infra/ray-cluster.yaml passes the cluster launcher's own schema (as `ray up` checks it)."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "infra" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert commands.count("RAY_AUTH_MODE=token") == 2  # token auth on every node, explicitly
    assert "~/.ray/auth_token" in config["file_mounts"]
