"""The search's side of a tracking server that goes away: TrialRunsCallback keeps the metrics the server did
not take (after MLflow's own retries) and sends them, in order, once it answers again; the search never stops
for it. A real refused connection, then a real MLflow store (tests/test_cluster.py restarts a real server
mid-search; this pins the buffering itself in a second)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once the socket is closed


def test_metrics_the_server_did_not_take_are_sent_once_it_is_back(tmp_path, monkeypatch, caplog):
    from search.tracking import NODE_TAG, NODES_TAG, TrialRunsCallback

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own ~4 minutes of retries: off here
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = store.create_experiment("away")
    run = store.create_run(experiment).info.run_id
    away = f"http://127.0.0.1:{closed_port()}"
    callback = TrialRunsCallback(tracking_uri=away, experiment_id=experiment, parent_run_id="p", max_epochs=3)
    callback._client, callback._runs = MlflowClient(away), {"t1": run}  # the server is down: refused
    trial = SimpleNamespace(trial_id="t1")

    with caplog.at_level(logging.WARNING, logger="search.tracking"):
        callback.on_trial_result(0, [], trial, {"epoch": 1, "acc": 0.5, "node_id": "n1"})  # no exception
    assert "MLflow server unreachable" in caplog.text and "1 metric batch(es) kept" in caplog.text
    assert store.get_run(run).data.metrics == {}

    callback._client = store  # the server answers again
    callback.on_trial_result(0, [], trial, {"epoch": 2, "acc": 0.75, "node_id": "n2"})
    history = store.get_metric_history(run, "acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)] and callback._pending == []
    tags = store.get_run(run).data.tags
    assert tags[NODE_TAG] == "n2" and tags[NODES_TAG] == "n1,n2"  # a move to another node is recorded


@pytest.mark.slow
def test_the_one_user_server_script_serves_runs_and_artifacts(tmp_path):
    """infra/mlflow-server.sh (SQLite, no auth, one user): it answers, takes a run and an artifact through its
    proxy into HOME, and its pid is the server's (exec), so a supervisor stops it by pid."""
    from infra.processes import Started, children_of, free_ports, signal_pids, wait_until

    (port,) = free_ports(1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = Started(
        "mlflow-server.sh",
        [str(ROOT / "infra" / "mlflow-server.sh"), "--port", str(port), "--home", str(tmp_path)],
        env=env,
        log=tmp_path / "server.log",
    )
    try:
        uri = f"http://127.0.0.1:{port}"

        def healthy():
            assert server.running(), server.tail()
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(healthy, timeout=240, what="infra/mlflow-server.sh")
        assert "mlflow" in Path(f"/proc/{server.pid}/cmdline").read_text()  # exec: the script became it
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("one-user")).info.run_id
        (tmp_path / "note.txt").write_text("hello")
        client.log_artifact(run, str(tmp_path / "note.txt"))
        assert [p.read_text() for p in (tmp_path / "mlflow-server-artifacts").rglob("note.txt")] == ["hello"]
        assert (tmp_path / "mlflow-server.db").is_file()
    finally:
        tree = children_of(server.pid)
        server.stop()
        signal_pids(tree, 9)
