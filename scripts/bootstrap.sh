#!/usr/bin/env bash
# Create .venv and install chainlit-orm with every extra and the development dependency groups
# (test, bench, docs: PEP 735 groups in pyproject.toml, not published extras), pinned by
# constraints.txt. `pip install --group` needs pip >= 25.1, hence the pip upgrade first.
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
echo "bootstrap: installing chainlit-orm, its extras and the test/bench/docs groups (pinned by constraints.txt)" >&2
# this machine's pip configuration names local mirrors that may be absent: drop that noise only
quiet() { "$@" 2> >(grep -v '^WARNING: Location .* is ignored' >&2); }
quiet "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
quiet "$venv/bin/python" -m pip install -q -c constraints.txt -e '.[all]' \
  --group test --group bench --group docs
echo "$want" >"$stamp"
