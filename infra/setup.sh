#!/usr/bin/env bash
# Create (or reuse) .venv and install cgan-search into it, editable, with the dev tools.
# With --test, also make sure the system packages the test suite drives are present: Debian's chromium
# (the MLflow UI check opens the real UI in a real browser) and blender (the Blender engine renders real scenes).
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
