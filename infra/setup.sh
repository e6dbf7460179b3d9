#!/usr/bin/env bash
# Create (or reuse) .venv and install cgan-search into it, editable, with the dev tools.
# With --test, also make sure the system packages the test suite drives are present: Debian's chromium
# (the MLflow UI check opens the real UI in a real browser) and blender (the Blender engine renders real scenes).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# The test suite also runs the shared tracking server (tests/test_cluster.py): the `server` extra.
extras=dev
[[ "${1:-}" == "--test" ]] && extras=dev,server
.venv/bin/pip install -q -e ".[$extras]"
if [[ "${1:-}" == "--test" ]] && ! command -v chromium >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: the UI test needs Debian's chromium; run: sudo apt-get install chromium" >&2
    exit 1
  fi
fi
# tests/test_blender.py renders with Debian's Blender 3.4 (Cycles on the CPU). Measured here: 158 packages,
# 169 MB of downloads, 22 s of dpkg once downloaded (docs/data.md, "Blender engine").
if [[ "${1:-}" == "--test" ]] && ! command -v blender >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends blender >/dev/null
  else
    echo "setup: the Blender engine's tests need Debian's blender; run: sudo apt-get install blender" >&2
    exit 1
  fi
fi
# tests/test_cluster.py runs the shared tracking server on Debian's PostgreSQL 15 (infra/tracking_server.py).
# Measured on this project's image (which has the libraries PostgreSQL links): 8 packages, 23 MB downloaded
# in 12 s from the local mirror, 87 MB unpacked (6 s for dpkg -x at load 30); a bare Debian also needs
# libllvm14, libicu72, libz3-4, libxslt1.1, libpq5 (39 MB more, apt-cache's sizes).
# The package creates the `postgres` system user. Its default cluster is not wanted (the helper makes its own
# under a temp dir): createcluster.d below stops the package from creating one.
if [[ "${1:-}" == "--test" ]] && [[ ! -x /usr/lib/postgresql/15/bin/postgres ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/cgan-search.conf
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
  else
    echo "setup: the cluster tests need Debian's PostgreSQL 15; run: sudo apt-get install postgresql-15" >&2
    exit 1
  fi
fi
