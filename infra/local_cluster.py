"""A multi-node Ray cluster on one machine, for tests and demos: a head (the driver, no trials) and N worker
nodes, each its own `ray start` on 127.0.0.1 with its own ports and a custom resource naming it
(`node_w1`, ...: a trial or task can be steered to one), token authentication on every node, and the
PostgreSQL-backed, authenticated MLflow server of infra/tracking_server.py.

    python -m infra.local_cluster --workers 2           # prints the addresses, runs until Ctrl-C

Every process it starts carries a marker in its environment, so `stop` (also run on Ctrl-C, SIGTERM, at
interpreter exit, and by a test fixture's teardown when the test failed) finds and ends all of them by pid,
including workers whose raylet was killed. Ports are free ones; nothing listens beyond what Ray itself opens.

Ray 2.60 and loopback: worker nodes can join only with Ray's multi-node mode on, and then its GCS, raylets and
agents bind every interface even with --node-ip-address 127.0.0.1 (only the dashboard and MLflow stay on
127.0.0.1; docs/search.md, "Security defaults"). The token is what keeps other machines out: it is random per
cluster, passed in the environment (RAY_AUTH_TOKEN), and written 0600 for the user's shell only.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from infra.processes import MARKER, Started, alive, children_of, free_ports, marked, signal_pids, wait_until
from infra.tracking_server import ADMIN_USER, TrackingServer

BIN = Path(sys.executable).parent  # ray of this environment
NODE_PORTS = (
    "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
)  # fmt: skip
HEAD_PORTS = ("--port", "--dashboard-port", "--ray-client-server-port")
START_RETRIES = 2


@dataclass
class Node:
    name: str  # "head", "w1", "w2", ...
    process: Started
    resource: str | None  # the custom resource only this node has: {"node_w1": 1}
    args: list[str] = field(default_factory=list)  # its own `ray start` arguments, for a retry
    pids: set[int] = field(default_factory=set)  # everything seen below its `ray start`
    retries: int = 0

    def refresh(self) -> set[int]:
        self.pids |= set(children_of(self.process.pid))
        return self.pids


class LocalCluster:
    """Start with `with LocalCluster(workers=2) as cluster:` (or start()/stop()). Addresses: `dashboard`
    (the jobs API: `ray job submit --address`), `gcs`, `tracking_uri`; `env()` is what a shell needs to
    submit (the token, the MLflow login)."""

    def __init__(
        self,
        *,
        workers: int = 2,
        cpus_per_worker: float = 1,
        head_cpus: float = 0,
        object_store_mb: int = 300,
        tracking: bool = True,
        root: Path | None = None,
        mlflow_user: str = "cgan-search",
        env: dict[str, str] | None = None,
    ):
        # /tmp, short: Ray's socket paths must stay under 108 characters. 0711: the postgres user may pass.
        self.root = Path(root or tempfile.mkdtemp(prefix="cgan-cluster-", dir="/tmp"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)
        self.marker = f"cluster-{secrets.token_hex(6)}"
        self.workers, self.cpus_per_worker, self.head_cpus = workers, cpus_per_worker, head_cpus
        self.object_store = object_store_mb * 1024 * 1024
        self.token = secrets.token_hex(32)
        self.token_file = self.root / "auth_token"
        # The search logs in as a user of its own, as on Kubernetes (docs/cluster.md): not the admin, whose
        # password only the helper knows. Both generated: never typed, never on a command line or in a log.
        self.mlflow_user = mlflow_user
        self.mlflow_password = secrets.token_urlsafe(18)
        self._admin_password = secrets.token_urlsafe(18)
        self.extra_env = dict(env or {})
        self.temp_dir = self.root / "ray"
        self.nodes: list[Node] = []
        self.tracking: TrackingServer | None = None
        if tracking:
            self.tracking = TrackingServer(
                self.root / "mlflow",
                admin_password=self._admin_password,
                marker=self.marker,
                durable=False,  # thrown away with the cluster
            )
        self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)
        self._stopped = False

    # --- addresses and environments ---------------------------------------------------------------------

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def tracking_uri(self) -> str | None:
        return self.tracking.uri if self.tracking else None

    def env(self, *, token: bool = True, mlflow: bool = True) -> dict[str, str]:
        """The calling shell's environment for `ray job submit` / a client: the token, the MLflow login."""
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token"}
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", MARKER):
            env.pop(name, None)
        if token:
            env["RAY_AUTH_TOKEN"] = self.token
        if mlflow and self.tracking:
            env["MLFLOW_TRACKING_USERNAME"] = self.mlflow_user
            env["MLFLOW_TRACKING_PASSWORD"] = self.mlflow_password
        return env

    def _node_env(self, *, head: bool) -> dict[str, str]:
        # The head runs the job's driver, the only MLflow client of a search: it alone gets the login (as the
        # RayCluster of infra/k8s/ gives it to the head pod only). Worker nodes get the token, nothing else.
        env = {
            **self.env(token=True, mlflow=head),
            MARKER: self.marker,
            **self.extra_env,
        }
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # "0" would refuse the worker nodes' joins
        return env

    # --- start / stop --------------------------------------------------------------------------------------

    def _ray_start(self, name: str, args: list[str], *, head: bool, resource: str | None) -> Node:
        ports = free_ports(len(NODE_PORTS))
        argv = [
            str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1",
            "--object-store-memory", str(self.object_store),
            *args,
            *(x for flag, port in zip(NODE_PORTS, ports, strict=True) for x in (flag, str(port))),
        ]  # fmt: skip
        if resource:
            argv += ["--resources", json.dumps({resource: 1})]
        process = Started(
            f"ray-{name}",
            argv,
            env=self._node_env(head=head),
            log=self.root / f"ray-{name}.log",
            cwd=self.root,
        )
        node = Node(name, process, resource, args)
        self.nodes.append(node)
        return node

    def _alive_nodes(self) -> int:
        out = subprocess.run(
            [
                str(BIN / "ray"),
                "list",
                "nodes",
                "--address",
                self.dashboard,
                "--format",
                "json",
                "--limit",
                "100",
            ],
            env=self.env(mlflow=False),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            return -1
        return sum(n.get("state") == "ALIVE" for n in json.loads(out.stdout or "[]"))

    def start(self) -> LocalCluster:
        """Head, then the tracking server while the workers join (both take seconds), then wait for all."""
        try:
            self._write_token()
            self._ray_start(
                "head",
                [
                    "--head", "--temp-dir", str(self.temp_dir), "--num-cpus", str(self.head_cpus),
                    "--dashboard-host", "127.0.0.1",
                    *(x for flag, port in zip(HEAD_PORTS, (self.gcs_port, self.dashboard_port, self.client_port),
                                              strict=True) for x in (flag, str(port))),
                ],
                head=True,
                resource="node_head",
            )  # fmt: skip
            self._wait_for_jobs_api()
            if self.tracking:  # first: its two MLflow imports are the start's biggest CPU cost
                self.tracking.start()
                self._create_mlflow_user()
                # for a user's shell (describe): 0600, in the cluster's own folder, removed with it
                fd = os.open(self.root / "mlflow-password", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(self.mlflow_password)
            # One worker at a time: a raylet has 30 s to register (hard-coded, ray/_private/node.py), which
            # two raylets starting together on 2 busy cores sometimes miss.
            for i in range(1, self.workers + 1):
                self._ray_start(
                    f"w{i}",
                    # A temp dir per node: each node's runtime-env agent deletes job packages (the job's
                    # --working-dir) it no longer uses from ITS session folder; shared with the head's, that
                    # deleted the running driver's code (seen: "spaces/smoke.yaml: no such file").
                    ["--address", self.gcs, "--num-cpus", str(self.cpus_per_worker),
                     "--temp-dir", str(self.root / f"ray-w{i}")],
                    head=False,
                    resource=f"node_w{i}",
                )  # fmt: skip
                wait_until(lambda i=i: self._check_nodes() == i + 1, timeout=240, what=f"Ray node w{i}")
        except BaseException:
            self.stop()
            raise
        return self

    def _create_mlflow_user(self) -> None:
        """The search's account, made by the admin through MLflow's auth API. Its default permission is READ
        on what others made; the experiments and runs it creates are its own (MANAGE)."""
        from mlflow.server.auth.client import AuthServiceClient

        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN_USER, MLFLOW_TRACKING_PASSWORD=self._admin_password)
        try:
            AuthServiceClient(self.tracking_uri).create_user(self.mlflow_user, self.mlflow_password)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def _check_nodes(self) -> int:
        for i, node in enumerate(self.nodes):
            node.refresh()
            if node.process.running():
                continue
            # `ray start` gives a raylet 30 s to register (hard-coded in ray/_private/node.py); on 2 busy
            # cores that is sometimes not enough ("The current node timed out during startup"): try again.
            if node.name == "head" or node.retries >= START_RETRIES:
                raise RuntimeError(f"ray start ({node.name}) exited: {node.process.tail()}")
            signal_pids(node.refresh(), signal.SIGKILL)
            again = self._ray_start(node.name, node.args, head=False, resource=node.resource)
            again.retries = node.retries + 1
            self.nodes[i] = again
            self.nodes.pop()  # _ray_start appended it
        return self._alive_nodes()

    def _wait_for_jobs_api(self) -> None:
        def up() -> bool:
            head = self.nodes[0]
            head.refresh()
            if not head.process.running():
                raise RuntimeError(f"ray start --head exited: {head.process.tail()}")
            probe = subprocess.run(
                [str(BIN / "ray"), "job", "list", "--address", self.dashboard],
                env=self.env(mlflow=False),
                capture_output=True,
                timeout=60,
            )
            return probe.returncode == 0

        wait_until(up, timeout=180, what="the Ray head's jobs API", poll=1)

    def _write_token(self) -> None:
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def node_id(self, name: str) -> str:
        """The Ray node id of a node of this cluster (what `ray.get_runtime_context().get_node_id()` says)."""
        node = self.node(name)
        out = subprocess.run(
            [str(BIN / "ray"), "list", "nodes", "--address", self.dashboard, "--format", "json", "--detail",
             "--limit", "100"],
            env=self.env(mlflow=False), capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        for entry in json.loads(out.stdout):
            if node.resource in (entry.get("resources_total") or {}):
                return entry["node_id"]
        raise KeyError(f"no Ray node has the resource {node.resource}")

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL a worker node: its `ray start`, raylet, agents and every worker process on it, by pid (as a
        machine that dies would). Returns the pids killed."""
        node = self.node(name)
        pids = sorted({node.process.pid, *node.refresh()})
        signal_pids(pids, signal.SIGKILL)
        node.process.stop(signal.SIGKILL, timeout=5)  # reaps it
        return pids

    def pids(self) -> set[int]:
        """Every live process this cluster started (by its environment marker)."""
        return set(marked(self.marker))

    def stop(self) -> None:
        """Ray first (the job's driver is the tracking server's client), then MLflow and PostgreSQL; then
        SIGKILL whatever still carries the marker. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for node in self.nodes:  # all at once: each `ray start --block` drains its node, then stops it
            node.refresh()
            signal_pids([node.process.pid], signal.SIGTERM)
        for node in reversed(self.nodes):
            node.process.stop(signal.SIGTERM, timeout=30)
        if self.tracking:
            self.tracking.stop()
        for _ in range(3):
            left = marked(self.marker)
            if not left:
                break
            signal_pids(left, signal.SIGKILL)
            time.sleep(0.5)
        for node in self.nodes:
            signal_pids([p for p in node.pids if alive(p)], signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def describe(self) -> str:
        lines = [
            f"Ray jobs API / dashboard: {self.dashboard}  (GCS {self.gcs})",
            f"nodes: head (no trials) + {self.workers} workers x {self.cpus_per_worker:g} CPU, "
            f"custom resources {', '.join(n.resource for n in self.nodes if n.resource)}",
        ]
        if self.tracking:
            lines.append(
                f"MLflow tracking server: {self.tracking_uri}  (PostgreSQL on 127.0.0.1:{self.tracking.postgres.port})"
            )
        lines += [
            "in another shell:",
            "  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=" + str(self.token_file),
        ]
        if self.tracking:
            lines.append(
                f'  export MLFLOW_TRACKING_USERNAME={self.mlflow_user} MLFLOW_TRACKING_PASSWORD="$(cat {self.root}/mlflow-password)"'
            )
        lines.append(
            f"  ray job submit --address {self.dashboard} --working-dir . -- python search/clevr.py --smoke-test"
            + (f" --tracking-uri {self.tracking_uri}" if self.tracking else "")
        )
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local_cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    parser.add_argument(
        "--cpus-per-worker", type=float, default=1, help="CPUs each worker node offers (default 1)"
    )
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow server")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.cpus_per_worker <= 0:
        parser.error("--workers must be >= 1 and --cpus-per-worker > 0")
    cluster = LocalCluster(
        workers=args.workers, cpus_per_worker=args.cpus_per_worker, tracking=not args.no_tracking
    )
    atexit.register(cluster.stop)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the atexit stop
    try:
        cluster.start()
        print(cluster.describe(), flush=True)
        print("Ctrl-C stops every process of this cluster.", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError, OSError) as err:
        # a node that did not start: one line, not a traceback
        print(f"{parser.prog}: error: {' | '.join(str(err).splitlines())}", file=sys.stderr, flush=True)
        return 1
    finally:
        # a second Ctrl-C (an impatient user, or a wrapper forwarding its own) must not cut the stop short and
        # leave nodes running: stopping takes seconds and ends everything by pid anyway
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
