#!/usr/bin/env bash
# An MLflow tracking server for searches whose trials run on several machines, or for a shared UI.
#
#   infra/mlflow-server.sh [--port 5000] [--host 127.0.0.1] [--home DIR]
#   python search/clevr.py --tracking-uri http://127.0.0.1:5000
#
# Runs and the model registry go to SQLite (HOME/mlflow-server.db); artifacts (grids, checkpoints, models)
# to HOME/mlflow-server-artifacts, served by the server itself (--serve-artifacts), so clients need no
# shared filesystem. It binds 127.0.0.1 unless --host says otherwise, and has no authentication: for a
# server a team shares (PostgreSQL, basic auth, --allowed-hosts) use `python -m infra.tracking_server`.
# One search driver is the only writer of its runs; any number of searches may share one server.
# `exec` keeps this script's pid as the server's, so a supervisor (or a test) can stop it by pid.
set -euo pipefail
port=5000
host=127.0.0.1
home="${CGAN_SEARCH_HOME:-$HOME/.cgan-search}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --home) home="$2"; shift 2 ;;
    *) echo "mlflow-server.sh: unknown option $1 (use --port, --host, --home)" >&2; exit 2 ;;
  esac
done
mkdir -p "$home"
home="$(cd "$home" && pwd)"  # absolute: the server may be started from anywhere
bin="$(dirname "$0")/../.venv/bin"
mlflow="mlflow"
[[ -x "$bin/mlflow" ]] && mlflow="$bin/mlflow"
exec "$mlflow" server \
  --backend-store-uri "sqlite:///$home/mlflow-server.db" \
  --artifacts-destination "$home/mlflow-server-artifacts" \
  --serve-artifacts \
  --host "$host" --port "$port" \
  --workers 1
