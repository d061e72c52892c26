#!/usr/bin/env bash
# Create .venv and install chainlit-orm with every extra, pinned by constraints.txt.
# Re-installs only when pyproject.toml or constraints.txt changed since the last install.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${CHAINLIT_ORM_VENV:-$repo/.venv}"
stamp="$venv/.chainlit-orm-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv" >&2
  python3 -m venv "$venv"
fi
echo "bootstrap: installing chainlit-orm and its extras (pinned by constraints.txt)" >&2
# this machine's pip configuration names local mirrors that may be absent: drop that noise only
quiet() { "$@" 2> >(grep -v '^WARNING: Location .* is ignored' >&2); }
quiet "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
quiet "$venv/bin/python" -m pip install -q -c constraints.txt -e '.[all,test,bench]'
echo "$want" >"$stamp"
