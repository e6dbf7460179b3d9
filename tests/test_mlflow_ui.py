"""The MLflow UI shows what we track: a real tracking server, opened in a real browser (Debian's chromium).

The store is written by the real MLflow client in the shape the search writes (a parent run with nested
trial runs holding params and per-epoch metrics); the check is that a person opening the UI sees them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # This machine has no network but loopback: without these Chromium retries closed connections.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_store(uri: str, artifacts: Path) -> dict[str, str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("ui-check", artifact_location=artifacts.as_uri())
    parent = client.create_run(exp, run_name="search-ui-check")
    ids = {"experiment": exp, "parent": parent.info.run_id}
    for i, loss in enumerate(["hinge", "wgan_gp"]):
        child = client.create_run(exp, run_name=f"trial-{i}", tags={"mlflow.parentRunId": parent.info.run_id})
        client.log_param(child.info.run_id, "loss", loss)
        for epoch in range(3):
            client.log_metric(child.info.run_id, "acc", 0.1 * (epoch + i), step=epoch)
        client.set_terminated(child.info.run_id)
        ids[f"child{i}"] = child.info.run_id
    client.set_terminated(parent.info.run_id)
    return ids


@pytest.fixture
def server(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = write_store(uri, tmp_path / "artifacts")
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    # Its own session: the server forks workers and a job runner, all ended together by killpg.
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield url, ids
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def chromium(tmp_path: Path, *args: str) -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian's chromium is not installed: `bash infra/setup.sh --test` installs it")
    out = subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout


def test_runs_visible_in_the_ui(server, tmp_path):
    url, ids = server
    page = f"{url}/#/experiments/{ids['experiment']}/runs"
    dom = chromium(tmp_path, "--virtual-time-budget=30000", "--dump-dom", page)
    assert "ui-check" in dom, "experiment name missing from the rendered page"
    assert "search-ui-check" in dom, "parent run missing from the runs table"
    text = re.sub(r"<[^>]+>", " ", dom)  # visible text: the count and its caption sit in separate elements
    assert re.search(r"\b3\s+matching runs", text), (
        "the parent and its two nested trial runs should all match"
    )
    run_page = f"{url}/#/experiments/{ids['experiment']}/runs/{ids['child1']}"
    dom = chromium(tmp_path, "--virtual-time-budget=30000", "--dump-dom", run_page)
    assert "trial-1" in dom and "wgan_gp" in dom, "trial run page lacks its name or its params"
    shot = tmp_path / "runs.png"
    chromium(tmp_path, "--virtual-time-budget=30000", "--window-size=1400,900", f"--screenshot={shot}", page)
    assert shot.stat().st_size > 20_000, "screenshot looks blank"
