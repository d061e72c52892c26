#!/usr/bin/env bash
# The full test suite, from a fresh machine: virtualenv, install, services, checks, pytest.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/bootstrap.sh
bash scripts/services.sh
bash scripts/setup-e2e.sh
venv="${CHAINLIT_ORM_VENV:-$repo/.venv}"
echo "== chainlit-orm generate --check"
"$venv/bin/chainlit-orm" generate --check
echo "== ruff"
"$venv/bin/ruff" check chainlit_orm tests bench examples
echo "== mypy"
"$venv/bin/mypy"
echo "== mkdocs build --strict (the documentation site; no network: see mkdocs.yml)"
NO_MKDOCS_2_WARNING=1 "$venv/bin/mkdocs" build --strict --quiet --site-dir "$repo/site"
echo "== pytest"
# pytest exits 5 when it collects no test: that is a failure here, like any non-zero exit.
exec "$venv/bin/pytest" -q -p no:cacheprovider "$@"
