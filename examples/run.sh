#!/usr/bin/env bash
# Start the chainlit-orm demo: bash examples/run.sh   (PORT=8000 by default)
#
# First run: creates .venv at the repository root and installs the project into it.
# Data: a SQLite file and a folder of uploaded files under examples/.data/, unless
# CHAINLIT_ORM_DATABASE_URL / CHAINLIT_ORM_STORAGE_URL say otherwise (see examples/app.py).
# Auth: Chainlit needs CHAINLIT_AUTH_SECRET; when it is unset, app.py generates one and keeps it
# in examples/.data/auth-secret, so logins survive restarts.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

venv="${CHAINLIT_ORM_VENV:-$repo/.venv}"
if [ ! -x "$venv/bin/chainlit" ]; then
  echo "run.sh: creating $venv and installing chainlit-orm (first run only)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -c constraints.txt -e '.[all]'
fi

port="${PORT:-8000}"
host="${HOST:-127.0.0.1}"
alice="alice-pass"; [ -n "${DEMO_ALICE_PASSWORD:-}" ] && alice='<$DEMO_ALICE_PASSWORD>'
bob="bob-pass"; [ -n "${DEMO_BOB_PASSWORD:-}" ] && bob='<$DEMO_BOB_PASSWORD>'
cat >&2 <<BANNER

chainlit-orm demo
  open      http://$host:$port
  login     alice / $alice
  login     bob / $bob
BANNER
export CHAINLIT_ORM_DEMO_LAUNCHER=1

# Chainlit reads .chainlit/config.toml (thread sharing on) from its app root.
export CHAINLIT_APP_ROOT="$here"
exec "$venv/bin/chainlit" run examples/app.py --host "$host" --port "$port" --headless "$@"
