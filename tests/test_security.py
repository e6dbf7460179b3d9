"""Security defaults on the user's own machine: the local Ray a search starts listens on loopback only, Ray's
token file is readable by its owner only, and a password inside --tracking-uri is printed nowhere and
logged nowhere (MLflow params and tags, Tune's experiment folder).

The search test reads the kernel's socket table (/proc/net/{tcp,tcp6,udp,udp6}) while a real local search
runs against a real `mlflow server` on loopback behind a basic-auth proxy (which refuses any request without
the password, so the credentials provably still reach the server once they are out of the URI).
"""

from __future__ import annotations

import base64
import http.client
import http.server
import ipaddress
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_search_support import children_of, kill_pids, search_command, search_env

LISTEN, UDP_UNCONNECTED = "0A", "07"  # socket states in /proc/net/*


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net's address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_ip)
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)  # gRPC binds [::ffff:127.0.0.1]: IPv4 loopback on a v6 socket
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def listening_sockets() -> dict[int, tuple[str, str, int]]:
    """{socket inode: (protocol, address, port)} of every TCP listener and unconnected UDP socket."""
    out = {}
    for proto, wanted in (
        ("tcp", LISTEN),
        ("tcp6", LISTEN),
        ("udp", UDP_UNCONNECTED),
        ("udp6", UDP_UNCONNECTED),
    ):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == wanted and inode:
                hex_ip, hex_port = local.split(":")
                out[inode] = (proto, str(_address(hex_ip)), int(hex_port, 16))
    return out


def sockets_of(pids) -> dict[int, set[int]]:
    """{pid: socket inodes it holds}."""
    out = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # the process has ended
            continue
        inodes = set()
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile (the listing's own fd, for one)
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
        out[pid] = inodes
    return out


def listeners_of(pids) -> set[tuple[int, str, str, int]]:
    """(pid, protocol, address, port) for each listening socket held by one of `pids`."""
    table = listening_sockets()
    return {(pid, *table[i]) for pid, inodes in sockets_of(pids).items() for i in inodes if i in table}


def test_socket_table_reader_sees_a_listener_on_all_interfaces():
    """The reader itself: a socket bound to 0.0.0.0 is found, with this process's pid, and is not loopback."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        found = {x for x in listeners_of([os.getpid()]) if x[3] == port}
    assert found == {(os.getpid(), "tcp", "0.0.0.0", port)}
    assert not is_loopback(ipaddress.ip_address("0.0.0.0")) and not is_loopback(ipaddress.ip_address("::"))
    assert is_loopback(ipaddress.ip_address("::ffff:127.0.0.1")) and is_loopback(ipaddress.ip_address("::1"))


def test_token_file_is_created_and_tightened_owner_only(tmp_path, monkeypatch):
    from search.driver import secure_auth_token

    path = tmp_path / "ray" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    secure_auth_token(create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text()) == 64
    path.chmod(0o644)  # what Ray 2.60's own ray.init writes
    token = path.read_text()
    secure_auth_token(create=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == token  # the same token kept


def test_tracking_credentials_leave_the_uri_for_mlflow_env_vars(monkeypatch, tmp_path):
    from search.options import redacted, tracking_uri_or_default

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    uri = tracking_uri_or_default("https://me:p%40ss:w@mlflow.example.org:8443/prefix", tmp_path)
    assert uri == "https://mlflow.example.org:8443/prefix"
    assert (
        os.environ["MLFLOW_TRACKING_USERNAME"] == "me" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss:w"
    )
    assert tracking_uri_or_default("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    # a database store needs its password in the URI: kept there, shown as ***
    db = "postgresql://me:pw@db.example.org/mlflow"
    assert tracking_uri_or_default(db, tmp_path) == db
    assert redacted(db) == "postgresql://me:***@db.example.org/mlflow" and redacted(uri) == uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BasicAuthProxy(http.server.ThreadingHTTPServer):
    """HTTP basic auth in front of a real `mlflow server` (what an authenticating reverse proxy does; MLflow's
    own basic-auth app, which infra/tracking_server.py runs, would not count requests): 401 for any request
    without the credentials, else forwarded. Counts both, so a test sees that the credentials arrived."""

    def __init__(self, upstream_port: int, user: str, password: str):
        self.upstream_port, self.authorized, self.refused = upstream_port, 0, 0
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: BasicAuthProxy

    def _forward(self) -> None:
        if self.headers.get("Authorization") != self.expected_auth:
            self.server.refused += 1
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.authorized += 1
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=120)
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization", "connection")
        }
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    @property
    def expected_auth(self) -> str:
        return self.server.expected

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *args) -> None:  # quiet: the test reads the counters
        pass


@pytest.fixture
def auth_server(tmp_path):
    """A real `mlflow server` on loopback behind BasicAuthProxy: (proxy url, user, password, proxy, pid)."""
    user, password = "searcher", "s3cret-Pw-9f2c41"  # distinctive: grep finds nothing else by accident
    port = free_port()
    folder = tmp_path / "server"
    folder.mkdir()
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            *("server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
            *("--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts"),
        ],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the server forks workers: all ended together by killpg
        # No GenAI job runner (7 huey consumer processes, each importing mlflow): tracking never uses it,
        # and at start-up it competes with the server for the 2 cores (/health came up ~2x later with it).
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    proxy = BasicAuthProxy(port, user, password)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{proxy.server_address[1]}", user, password, proxy, proc.pid
    finally:
        proxy.shutdown()
        proxy.server_close()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow
def test_local_search_listens_on_loopback_keeps_the_token_private_and_the_password_unseen(
    auth_server, tmp_path_factory, tmp_path
):
    url, user, password, proxy, server_pid = auth_server
    home = tmp_path_factory.getbasetemp() / "search-home"  # shared with the other search tests: caches reused
    home.mkdir(exist_ok=True)
    fake_home = tmp_path / "user"  # $HOME: where Ray keeps its token file, so the developer's is untouched
    (fake_home / ".ray").mkdir(parents=True)
    token = fake_home / ".ray" / "auth_token"
    token.write_text("0123456789abcdef" * 4)
    token.chmod(0o644)  # as Ray 2.60's ray.init leaves it
    uri = url.replace("http://", f"http://{user}:{password}@")
    experiment = "security"
    env = {**search_env(home), "HOME": str(fake_home)}
    for name in (
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
    ):
        env.pop(name, None)
    # One epoch: every trial still starts its worker, reports, checkpoints and logs to the server, and
    # --promote finds trials that ran to max_epochs; a second epoch only repeats the same requests.
    args = ("--smoke-test", "--num-samples", "2", "--max-epochs", "1", "--experiment", experiment)
    log = tmp_path / "search.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            search_command("clevr", *args, "--tracking-uri", uri, "--promote"),
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seen: set[tuple[int, str, str, int]] = set()
    spawned: set[int] = set()
    server = {server_pid, *children_of(server_pid)}
    try:
        deadline = time.monotonic() + 400
        while proc.poll() is None and time.monotonic() < deadline:
            spawned.update(children_of(proc.pid))
            seen |= listeners_of({proc.pid, *spawned, *server})
            time.sleep(0.5)
        assert proc.poll() is not None, "the search did not end in time"
    finally:
        spawned.update(children_of(proc.pid))
        kill_pids([proc.pid, *spawned])  # its local Ray, if it left any: only what it spawned
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]

    # Ray's GCS, raylet, workers, agents and the driver listened, all of them on loopback only.
    ray_pids = {pid for pid, *_ in seen} - server
    assert len(ray_pids) >= 4, seen  # driver, GCS, raylet, agents, trial workers were all seen listening
    assert [x for x in seen if not is_loopback(ipaddress.ip_address(x[2]))] == []

    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert password not in text
    assert f"--tracking-uri {url}" in text  # the search still says where its runs are, without the password

    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
    try:
        client = MlflowClient(url)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], max_results=100)
        assert len(runs) == 3  # the search's parent run and its two trials reached the authenticated server
        assert proxy.authorized > 0 and proxy.refused == 0  # every request of the search carried them
        for run in runs:
            logged = {**run.data.params, **run.data.tags}
            assert [k for k, v in logged.items() if password in v] == []
        version = client.get_model_version_by_alias("clevr-cgan", "champion")
        assert all(password not in v for v in version.tags.values())
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")
    # Tune pickles the MLflow callback (with its tracking URI) into the experiment folder.
    leaked = [
        str(f)
        for f in (home / "ray_results" / experiment).rglob("*")
        if f.is_file() and password.encode() in f.read_bytes()
    ]
    assert leaked == []
