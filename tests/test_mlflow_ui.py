"""The MLflow UI as a user meets it: a real tracking server, opened in a real browser (Debian's chromium).

The store holds a search in the shape the driver writes it (search.tracking's experiment with its UI tags, a
parent run, nested trial runs with params, per-epoch metrics, the Optuna state and a sample grid), written
over HTTP to the server. The browser opens the URL the search prints (`tracking.ui_url`) and the check is
what a person sees: the training view (not the GenAI overview MLflow 3.17 opens by default), the runs table
with `acc_val`, `acc`, `acc_test`, `acc_new_test` and the state as columns, the trials nested under the search run, a
trial's metric charts and its grid. Chromium is driven over the DevTools protocol on a pipe (stdlib only),
so one browser serves every page and each wait ends as soon as the page shows what is awaited.

Regenerate the screenshots in docs/ from a real search's store (docs/search.md, "The MLflow UI"):

    python -m tests.test_mlflow_ui --tracking-uri http://127.0.0.1:5000 --experiment NAME --out docs
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from search import tracking

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
    "--hide-scrollbars",
]
WINDOW = (1600, 1000)
METRICS = ("acc_val", "acc", "acc_test", "acc_new_test")
# The run-name cell's unfold button and the assistant panel's close button, by MLflow 3.17's component ids.
EXPANDER = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'
CLOSE_ASSISTANT = 'button[data-component-id="mlflow.assistant.chat_panel.close"]'
CLOSE_BANNER = 'button[data-component-id="mlflow.experiment_page.shared_view.dismiss"]'
SHOTS = {"runs": "mlflow-runs.png", "charts": "mlflow-trial-charts.png", "grid": "mlflow-trial-grid.png"}


class Browser:
    """Headless Chromium over the DevTools protocol on `--remote-debugging-pipe` (fd 3 in, fd 4 out,
    messages ended by NUL): no websocket library and no port."""

    def __init__(self, profile: Path):
        exe = shutil.which("chromium")
        if exe is None:
            pytest.fail("Debian's chromium is not installed: `bash infra/setup.sh --test` installs it")
        to_browser, self._in = os.pipe()
        self._out, from_browser = os.pipe()
        # bash puts the pipe ends on the fds the protocol names, then becomes chromium (exec: same pid).
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser} 4>&{from_browser}', "chromium", exe, *CHROMIUM_FLAGS,
             f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--remote-debugging-pipe"],
            pass_fds=(to_browser, from_browser),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=WINDOW[0],
            height=WINDOW[1],
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, timeout: float = 60, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._in, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:  # anything else is an event or an older reply
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method} in {timeout} s")
            chunk = os.read(self._out, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (rc {self.proc.poll()}) during {method}")
            self._buffer += chunk

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait(self, what: str, expression: str, timeout: float = 90):
        """Poll a JS expression until it is truthy; its last value and the page's text in the failure."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not seen in {timeout} s; the page shows:\n{self.text()[:3000]}")
            time.sleep(0.3)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def click_all(self, selector: str) -> int:
        return self.js(f"[...document.querySelectorAll('{selector}')].map(b => b.click()).length")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # a throwaway profile: nothing to flush
        self.proc.wait(timeout=20)
        os.close(self._in)
        os.close(self._out)


def has_text(*needles: str) -> str:
    return " && ".join(f"(document.body?.innerText ?? '').includes({json.dumps(n)})" for n in needles)


def tour(browser: Browser, url: str, experiment_id: str, trial: tuple[str, str], shots: Path | None) -> dict:
    """Open the runs table, unfold the search run, then one trial's charts and grid, as a person would.
    Returns what each page showed; writes the screenshots into `shots` when given."""
    seen = {}
    browser.open(tracking.ui_url(url, experiment_id))
    browser.wait("the runs table", has_text("matching runs"))
    browser.wait("the search run's unfold button", f"!!document.querySelector('{EXPANDER}')")
    headers = "[...document.querySelectorAll('.ag-header-cell[col-id]')].map(e => e.getAttribute('col-id'))"
    browser.wait(
        "the search's columns (the shared view named in the URL)",
        f"{json.dumps(list(tracking.VIEW_COLUMNS))}.every(c => {headers}.includes(c))",
    )
    seen["headers"] = browser.js(headers)
    seen["runs_folded"] = browser.text()
    browser.click_all(CLOSE_ASSISTANT)
    browser.click_all(CLOSE_BANNER)
    browser.click_all(EXPANDER)
    browser.wait("the trial runs after unfolding the search run", has_text(trial[1]))
    seen["runs"] = browser.text()
    if shots:
        browser.screenshot(shots / SHOTS["runs"])
    # A click on a run's name drops the URL's workflowType (3.17 keeps the switch per browser once flipped
    # by hand): open the trial's pages with it, as the runs table's link plus the switch would.
    run = f"{url}/#/experiments/{experiment_id}/runs/{trial[0]}"
    browser.open(f"{run}/model-metrics?workflowType=machine_learning")
    browser.wait("the trial's metric charts", has_text(*METRICS))
    browser.wait("drawn charts", "document.querySelectorAll('.js-plotly-plot').length >= 3")
    browser.click_all(CLOSE_ASSISTANT)
    seen["charts"] = browser.text()
    if shots:
        browser.screenshot(shots / SHOTS["charts"])
    browser.open(f"{run}/artifacts?workflowType=machine_learning")
    browser.wait("the artifact tree", "!!document.querySelector('[data-testid=artifact-tree-node]')")
    browser.click_all(CLOSE_ASSISTANT)
    # Unfold grids/ and its last epoch, then select the last grid: the artifact view previews the PNG.
    nodes = "document.querySelectorAll('[data-testid=artifact-tree-node]')"
    last_node = f"[...{nodes}].pop()"
    for depth in range(1, 4):  # the last folder's children appear after it: the last node is the deepest
        if browser.js(f"{last_node}.getAttribute('artifact-name').endsWith('.png')"):
            break
        shown = browser.js(f"{nodes}.length")
        browser.js(f"{last_node}.click()")
        browser.wait(f"level {depth} of the artifact tree unfolded", f"{nodes}.length > {shown}")
    browser.js(f"{last_node}.click()")
    seen["grid_px"] = browser.wait(
        "the sample grid's preview",
        "[...document.images].filter(i => i.src.startsWith('blob:') && i.complete).map(i => i.naturalWidth)[0]",
    )
    seen["grid"] = browser.text()
    if shots:
        browser.screenshot(shots / SHOTS["grid"])
    return seen


# ---- the store and the server -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grid_png(seed: int) -> bytes:
    """A 4x4 grid of coloured 16x16 tiles (a stand-in image; its content is not what is tested)."""
    import numpy as np
    from PIL import Image

    tiles = np.random.default_rng(seed).integers(0, 256, (4, 4, 1, 1, 3), dtype=np.uint8)
    grid = np.broadcast_to(tiles, (4, 4, 16, 16, 3)).transpose(0, 2, 1, 3, 4).reshape(64, 64, 3)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grid)).save(out, format="PNG")
    return out.getvalue()


TRIALS = {"trial_a": ("hinge", "COMPLETE", 0.62), "trial_b": ("wgan_gp", "PRUNED", 0.35)}


def write_search(uri: str, tmp: Path) -> dict[str, str]:
    """A finished search as the driver leaves it: tracking's own experiment, parent and tags."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    exp = tracking.ensure_experiment(client, "ui-check", tracking_uri=uri, artifact_root=tmp)
    parent = tracking.create_parent(
        client, exp, name="search-ui-check", experiment_dir=str(tmp / "ray_results"), tags={}, params={}
    )
    ids = {"experiment": exp, "parent": parent}
    for name, (loss, state, acc) in TRIALS.items():
        tags = {tracking.PARENT_TAG: parent, tracking.ROLE_TAG: "trial", tracking.TRIAL_TAG: name}
        run = client.create_run(exp, run_name=name, tags=tags).info.run_id
        tracking.log_params(client, run, {"loss": loss, "lr_g": 2e-4})
        epochs = 3 if state == "COMPLETE" else 1
        metrics = [
            Metric(key, value * (epoch + 1) / epochs, 0, epoch)
            for epoch in range(epochs)
            for key, value in zip(METRICS, (acc, acc - 0.02, acc - 0.05, acc - 0.1), strict=True)
        ]
        client.log_batch(run, metrics=metrics)
        grid = tmp / f"{name}.png"
        grid.write_bytes(grid_png(len(ids)))
        client.log_artifact(run, str(grid), artifact_path=f"grids/epoch_{epochs - 1:03d}")
        client.set_tag(run, tracking.STATE_TAG, state)
        client.set_terminated(run)
        ids[name] = run
    client.set_terminated(parent)
    return ids


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mlflow-ui")
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    # Its own session: the server forks workers and a job runner, all ended together by killpg.
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
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
        # No job runner (a second process importing MLflow): the GenAI jobs it serves are not used here.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
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
            time.sleep(0.5)
        yield url, write_search(url, tmp_path)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a throwaway store: no graceful shutdown to wait for
        proc.wait(timeout=20)
        log.close()


@pytest.mark.slow
def test_the_search_opens_as_a_training_run_table(server, tmp_path):
    url, ids = server
    browser = Browser(tmp_path / "chromium")
    try:
        seen = tour(browser, url, ids["experiment"], (ids["trial_a"], "trial_a"), tmp_path)
    finally:
        browser.close()
    folded = seen["runs_folded"]
    assert "Detect Issues" not in folded, "the GenAI overview, not the runs table"
    assert "Model registry" in folded and "Evaluation runs" not in folded, "the GenAI sidebar, not training's"
    assert "search-ui-check" in folded and "trial_a" not in folded, "the trials should sit folded under it"
    assert "3 matching runs" in folded.replace("\n", " "), "the parent and its two nested trials"
    assert set(tracking.VIEW_COLUMNS) <= set(seen["headers"]), seen["headers"]
    runs = seen["runs"]
    assert "trial_a" in runs and "COMPLETE" in runs and "PRUNED" in runs, "unfolded trials with their state"
    assert "0.62" in runs, "trial_a's last acc as a cell"
    assert "Evaluation runs" not in seen["charts"] and "Model metrics" in seen["charts"]
    assert seen["grid_px"] == 64, "the grid preview did not load"
    for shot in SHOTS.values():
        assert (tmp_path / shot).stat().st_size > 20_000, f"{shot} looks blank"


@pytest.mark.slow
def test_experiments_of_earlier_versions_get_the_ui_tags(server, tmp_path):
    """An experiment created without the tags (before they existed) gets them when a search reuses it."""
    from mlflow import MlflowClient

    url, _ = server
    client = MlflowClient(tracking_uri=url)
    old = client.create_experiment("old", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    assert tracking.ensure_experiment(client, "old", tracking_uri=url, artifact_root=tmp_path) == old
    tags = client.get_experiment(old).tags
    assert {k: tags.get(k) for k in tracking.UI_TAGS} == tracking.UI_TAGS
    view = json.loads(tags[f"mlflow.sharedViewState.{tracking.VIEW_KEY}"])
    assert view["selectedColumns"][: len(METRICS)] == [f"metrics.`{m}`" for m in METRICS]
    assert tracking.mlflow_ui_command(url, old) == f"open {tracking.ui_url(url, old)} in a browser"
    local = tracking.mlflow_ui_command("sqlite:////x/mlflow.db", old)
    assert local.endswith(f"then open http://127.0.0.1:5000/#/experiments/{old}/runs?workflowType=machine_learning"
                          f"&viewStateShareKey={tracking.VIEW_KEY}")  # fmt: skip


# ---- screenshots of a real search for docs/ -------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.test_mlflow_ui", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tracking-uri", required=True, help="http://host:port of a running MLflow server")
    parser.add_argument("--experiment", required=True, help="a finished search's experiment name")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs (default docs)")
    args = parser.parse_args(argv)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        print(f"no experiment {args.experiment!r} at {args.tracking_uri}", file=sys.stderr)
        return 2
    tracking.ensure_experiment(client, exp.name, tracking_uri=args.tracking_uri, artifact_root=args.out)
    trials = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{tracking.ROLE_TAG}` = 'trial'",
        order_by=["metrics.acc_val DESC", "metrics.acc DESC"],  # the search's own choice: acc_val first
        max_results=1,
    )
    if not trials:
        print(f"experiment {args.experiment!r} has no trial runs", file=sys.stderr)
        return 2
    best = trials[0]
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"cgan-ui-shots-{os.getpid()}"
    browser = Browser(profile)
    try:
        tour(
            browser,
            args.tracking_uri.rstrip("/"),
            exp.experiment_id,
            (best.info.run_id, best.info.run_name),
            args.out,
        )
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
    for shot in SHOTS.values():
        print(args.out / shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
