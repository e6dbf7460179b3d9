#!/usr/bin/env bash
# Create (or reuse) .venv and install cgan-search into it, editable, with the dev tools.
# With --test, also make sure the system packages the test suite drives are present: Debian's chromium
# (the MLflow UI check opens the real UI in a real browser).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'
if [[ "${1:-}" == "--test" ]] && ! command -v chromium >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: the UI test needs Debian's chromium; run: sudo apt-get install chromium" >&2
    exit 1
  fi
fi
