#!/usr/bin/env bash
# Start every service the test suite needs, on 127.0.0.1, when it is not already running.
# Idempotent: a running service is left alone. Exits non-zero when a service cannot be started,
# so a missing backend fails loudly instead of being skipped.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHAINLIT_ORM_VENV:-$here/.venv}"
state="${CHAINLIT_ORM_STATE:-$here/.services}"
mkdir -p "$state"

MOTO_PORT="${MOTO_PORT:-5055}"
AZURITE_PORT="${AZURITE_PORT:-10000}"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 120); do port_open "$port" && return 0; sleep 0.5; done
  echo "services: $name did not come up on 127.0.0.1:$port (log: $state/$name.log)" >&2
  tail -n 30 "$state/$name.log" 2>/dev/null >&2 || true
  return 1
}

# PostgreSQL
if ! port_open 5432; then
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "services: installing PostgreSQL" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  wait_port postgresql 5432
fi

# MariaDB
if ! port_open 3306; then
  if [ ! -x /usr/sbin/mariadbd ]; then
    echo "services: installing MariaDB" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
  fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_port mariadb 3306
fi

# moto's server (DynamoDB, S3, CloudFormation), from PyPI (installed by the test dependency group)
if ! port_open "$MOTO_PORT"; then
  nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$state/moto.log" 2>&1 &
  echo $! >"$state/moto.pid"
  wait_port moto "$MOTO_PORT"
fi

# Azurite (Azure Blob), from npm
if ! port_open "$AZURITE_PORT"; then
  azurite_bin="$state/node_modules/.bin/azurite-blob"
  if [ ! -x "$azurite_bin" ]; then
    command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
    echo "services: installing azurite from npm" >&2
    npm install --silent --no-audit --no-fund --prefix "$state" azurite@3 >/dev/null
  fi
  nohup "$azurite_bin" --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" --skipApiVersionCheck \
    --disableTelemetry --inMemoryPersistence >"$state/azurite.log" 2>&1 &
  echo $! >"$state/azurite.pid"
  wait_port azurite "$AZURITE_PORT"
fi

echo "services: postgresql :5432, mariadb :3306, moto :$MOTO_PORT, azurite :$AZURITE_PORT are up"
