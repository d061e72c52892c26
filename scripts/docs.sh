#!/usr/bin/env bash
# Serve the documentation site locally with live reload: http://127.0.0.1:8001
#   bash scripts/docs.sh [mkdocs serve args]
# The reference pages are generated from the code on every build (scripts/mkdocs_hooks.py).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/bootstrap.sh
venv="${CHAINLIT_ORM_VENV:-$repo/.venv}"
NO_MKDOCS_2_WARNING=1 exec "$venv/bin/mkdocs" serve --strict --dev-addr 127.0.0.1:8001 "$@"
