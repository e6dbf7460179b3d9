"""An MLflow tracking server a team can share: PostgreSQL for runs, the registry and the users; artifacts
proxied by the server (`--serve-artifacts`, so clients need no shared filesystem or bucket credentials);
MLflow's basic-auth app (every request needs a user and password); `--allowed-hosts`; 127.0.0.1 by default.

    MLFLOW_AUTH_ADMIN_PASSWORD=... python -m infra.tracking_server --home /srv/mlflow --port 5000
    python -m infra.tracking_server --home /srv/mlflow --admin-password-file /run/secrets/mlflow-admin

No password is ever on a command line or in a log: the admin's comes from the environment or a file and
reaches MLflow through its environment (MLFLOW_AUTH_ADMIN_PASSWORD); PostgreSQL's is generated once, kept in
HOME/secrets/pgpass (0600) and reaches libpq through PGPASSFILE, so the database URIs name no password. The
search logs in with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (docs/cluster.md, "A shared tracking
server").

PostgreSQL refuses to run as root. Run as root (a container, CI), the database server runs as the `postgres`
system user that Debian's package creates: its data folder (HOME/postgres) is owned by that user, and every
folder above it must let that user through (a HOME under /root does not: pass --pgdata elsewhere). Run as
anyone else, it runs as that user.
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from infra.processes import MARKER, Started, free_ports, wait_until

PG_BIN = Path(os.environ.get("CGAN_SEARCH_PG_BIN", "/usr/lib/postgresql/15/bin"))  # Debian's postgresql 15
DB_USER = "mlflow"
DATABASES = ("mlflow", "mlflow_auth")  # runs + registry; basic-auth's users and permissions
ADMIN_USER = "admin"
MIN_PASSWORD = 12  # MLflow 3.17's basic-auth refuses a shorter admin password at its first start


class ServerError(RuntimeError):
    """A setup problem the CLI reports in one line (a folder the postgres user cannot reach, no password)."""


def _mlflow() -> str:
    here = Path(sys.executable).with_name("mlflow")  # this environment's MLflow, as pinned in pyproject
    return str(here) if here.is_file() else "mlflow"


def _private_file(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _reachable_by(user: pwd.struct_passwd, folder: Path) -> str | None:
    """Why `user` cannot traverse to `folder`, or None (mode bits only: what blocks the postgres user)."""
    for parent in [*reversed(folder.parents)]:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == user.pw_gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return f"the {user.pw_name} user cannot enter {parent} (mode {oct(st.st_mode & 0o777)})"
    return None


class Postgres:
    """A PostgreSQL cluster of its own: a data folder, 127.0.0.1:port, password (SCRAM) logins only over TCP,
    and a Unix socket in its own folder, which only its owner (and root) may enter."""

    def __init__(self, data: Path, *, port: int, secrets_dir: Path, marker: str, durable: bool = True):
        self.data, self.port, self.marker, self.durable = data.resolve(), port, marker, durable
        self.socket_dir = self.data.parent / "pg-socket"
        self.pgpass = secrets_dir / "pgpass"
        self.user = None if os.geteuid() else pwd.getpwnam("postgres")  # PostgreSQL refuses to run as root
        self.process: Started | None = None

    def uri(self, database: str) -> str:
        return (
            f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{database}"  # the password comes from PGPASSFILE
        )

    def client_env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.pgpass)}

    def _as_owner(self, path: Path) -> None:
        if self.user:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def _run(self, name: str, *args: str, env=None, as_owner: bool = True) -> None:
        log = self.data.parent / f"{name}.log"
        p = Started(
            name,
            [str(PG_BIN / name), *args],
            env={**os.environ, MARKER: self.marker, **(env or {})},
            log=log,
            user=self.user.pw_name if self.user and as_owner else None,
        )
        if p.proc.wait(timeout=300) != 0:
            raise ServerError(f"{name} failed ({log}): {' '.join(p.tail(400).split())}")
        p.stop()

    def initialise(self) -> None:
        """initdb, once: a cluster whose superuser is `mlflow` with a random password; then the databases."""
        if (self.data / "PG_VERSION").is_file():
            return
        if not (PG_BIN / "initdb").is_file():
            raise ServerError(
                f"{PG_BIN}/initdb not found: install Debian's postgresql (infra/setup.sh --test)"
            )
        self.data.parent.mkdir(parents=True, exist_ok=True)
        if self.user and (problem := _reachable_by(self.user, self.data.parent)):
            raise ServerError(f"--pgdata {self.data}: {problem}; choose a folder it can reach")
        password = secrets.token_urlsafe(24)
        _private_file(self.pgpass, f"127.0.0.1:{self.port}:*:{DB_USER}:{password}\n")
        for folder in (self.data, self.socket_dir):
            folder.mkdir(mode=0o700, exist_ok=True)
            self._as_owner(folder)
        pwfile = self.data.parent / "initdb-password"  # read by initdb as the postgres user, then removed
        _private_file(pwfile, password + "\n")
        self._as_owner(pwfile)
        try:
            self._run(
                "initdb",
                *("-D", str(self.data), "-U", DB_USER, f"--pwfile={pwfile}"),
                *("--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--locale=C.UTF-8"),
                *(() if self.durable else ("--no-sync",)),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self.start()
        for database in DATABASES:
            self._run("createdb", *("-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, database),
                      env=self.client_env(), as_owner=False)  # a client: it reads pgpass  # fmt: skip

    def start(self) -> None:
        if self.process and self.process.running():
            return
        # the port is in pgpass: a later start on another port must rewrite the line, password unchanged
        line = self.pgpass.read_text().strip().split(":")
        if line[1] != str(self.port):
            _private_file(self.pgpass, ":".join([line[0], str(self.port), *line[2:]]) + "\n")
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.socket_dir}"]
        if not self.durable:  # a throwaway cluster for tests: skip the disk flushes on 2 busy cores
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.process = Started(
            "postgres",
            [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), *options],
            env={**os.environ, MARKER: self.marker},
            log=self.data.parent / "postgres.log",
            user=self.user.pw_name if self.user else None,
        )
        wait_until(lambda: self._ready() or not self.process.running(), timeout=60, what="PostgreSQL")
        if not self.process.running():
            raise ServerError(f"postgres exited: {' '.join(self.process.tail(400).split())}")

    def _ready(self) -> bool:
        """Accepting connections (a socket file alone may be a stale one of a killed server)."""
        argv = [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

    def stop(self) -> None:
        if self.process:
            self.process.stop(signal.SIGINT)  # "fast shutdown": clients cut, everything written


class TrackingServer:
    """`mlflow server` on PostgreSQL with basic auth; `start`, `stop`, `restart` (same port, same data)."""

    def __init__(
        self,
        home: Path,
        *,
        admin_password: str,
        port: int | None = None,
        host: str = "127.0.0.1",
        allowed_hosts: str | None = None,
        pgdata: Path | None = None,
        pg_port: int | None = None,
        marker: str | None = None,
        durable: bool = True,
    ):
        if len(admin_password) < MIN_PASSWORD:
            raise ServerError(
                f"the admin password must have at least {MIN_PASSWORD} characters (MLflow's rule)"
            )
        self.home = home.resolve()
        self.secrets = self.home / "secrets"
        self.port, self.host = port or free_ports(1)[0], host
        self.marker = marker or f"tracking-{secrets.token_hex(4)}"
        self.postgres = Postgres(
            (pgdata or self.home / "postgres" / "data"),
            port=pg_port or free_ports(1)[0],
            secrets_dir=self.secrets,
            marker=self.marker,
            durable=durable,
        )
        # Without --allowed-hosts MLflow takes any Host header (DNS rebinding): name the ones clients use.
        self.allowed_hosts = allowed_hosts or f"127.0.0.1:{self.port},localhost:{self.port}"
        self._admin_password = admin_password
        self.process: Started | None = None

    @property
    def uri(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def _auth_config(self) -> Path:
        path = self.secrets / "basic_auth.ini"  # no password inside: the admin's comes from the environment
        _private_file(
            path,
            "[mlflow]\n"
            # An authenticated user may read every experiment; writing needs a grant (or the admin).
            "default_permission = READ\n"
            f"database_uri = {self.postgres.uri('mlflow_auth')}\n"
            f"admin_username = {ADMIN_USER}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # PBKDF2 on every request costs ~0.1 s of CPU; one worker, so a cached check is never stale
            "auth_cache_ttl_seconds = 60\n",
        )
        return path

    def _flask_key(self) -> str:
        path = self.secrets / "flask-secret-key"  # CSRF tokens of the UI's forms stay valid across restarts
        if not path.is_file():
            _private_file(path, secrets.token_hex(32))
        return path.read_text().strip()

    def start(self) -> TrackingServer:
        self.postgres.initialise()
        self.postgres.start()
        artifacts = self.home / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            MARKER: self.marker,
            **self.postgres.client_env(),
            "MLFLOW_AUTH_CONFIG_PATH": str(self._auth_config()),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self._admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self._flask_key(),
            # the GenAI job runner (4 more processes) serves nothing a search uses
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(name, None)
        self.process = Started(
            "mlflow-server",
            [
                _mlflow(), "server",
                "--backend-store-uri", self.postgres.uri("mlflow"),
                "--artifacts-destination", str(artifacts), "--serve-artifacts",
                "--app-name", "basic-auth",
                "--host", self.host, "--port", str(self.port), "--allowed-hosts", self.allowed_hosts,
                "--workers", "1",
            ],
            env=env,
            cwd=self.home,
            log=self.home / "mlflow-server.log",
        )  # fmt: skip
        try:
            wait_until(
                lambda: self._healthy() or not self.process.running(), timeout=240, what="MLflow server"
            )
        except TimeoutError as err:
            raise ServerError(f"{err}: {' '.join(self.process.tail(600).split())}") from None
        if not self.process.running():
            raise ServerError(f"mlflow server exited: {' '.join(self.process.tail(600).split())}")
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, *, database: bool = True) -> None:
        if self.process:
            self.process.stop(signal.SIGTERM)
        if database:
            self.postgres.stop()

    def restart(self, *, down_s: float = 0.0) -> None:
        """The MLflow server only (PostgreSQL keeps running), as a redeploy or a crash-loop restart would."""
        import time

        self.stop(database=False)
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> TrackingServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def admin_password(file: str | None) -> str:
    """From --admin-password-file, else $MLFLOW_AUTH_ADMIN_PASSWORD: never from a command line."""
    if file:
        try:
            value = Path(file).read_text().strip()
        except OSError as err:
            raise ServerError(f"--admin-password-file {file}: {err.strerror}") from None
        if not value:
            raise ServerError(f"--admin-password-file {file}: empty")
        return value
    value = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    if not value:
        raise ServerError(
            "set MLFLOW_AUTH_ADMIN_PASSWORD or pass --admin-password-file (never the password itself)"
        )
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.tracking_server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("CGAN_SEARCH_HOME", "~/.cgan-search")).expanduser() / "tracking-server",
                        help="the server's folder: artifacts, logs, secrets/ (0700); default $CGAN_SEARCH_HOME/tracking-server")  # fmt: skip
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1", help="listen address (loopback unless you mean it)")
    parser.add_argument(
        "--allowed-hosts", help="Host headers accepted (default 127.0.0.1:PORT,localhost:PORT)"
    )
    parser.add_argument("--pgdata", type=Path, help="PostgreSQL's data folder (default HOME/postgres/data)")
    parser.add_argument("--pg-port", type=int, help="PostgreSQL's port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--admin-password-file", help="a file holding the admin's password (else the environment)"
    )
    args = parser.parse_args(argv)
    try:
        server = TrackingServer(
            args.home,
            admin_password=admin_password(args.admin_password_file),
            port=args.port,
            host=args.host,
            allowed_hosts=args.allowed_hosts,
            pgdata=args.pgdata,
            pg_port=args.pg_port,
        )
        stop = lambda *_: (_ for _ in ()).throw(KeyboardInterrupt)  # noqa: E731 - SIGTERM ends like Ctrl-C
        signal.signal(signal.SIGTERM, stop)
        try:
            server.start()
            print(
                f"tracking server: {server.uri} (log in as {ADMIN_USER}); logs in {server.home}", flush=True
            )
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    except ServerError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
