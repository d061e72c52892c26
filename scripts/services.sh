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

# PgBouncer in transaction mode on :6432, in front of the PostgreSQL above (Debian's package).
# It refuses to run as root, so it runs as the `postgres` user, from a directory of its own
# (config, auth_file, pid, log), not Debian's /etc/pgbouncer service. `* = ...` routes every
# database name to the server, so the suite's per-test databases work through it unchanged.
PGBOUNCER_PORT="${PGBOUNCER_PORT:-6432}"
PGBOUNCER_DIR="${CHAINLIT_ORM_PGBOUNCER_DIR:-/tmp/chainlit-orm-pgbouncer}"
if ! port_open "$PGBOUNCER_PORT"; then
  if [ ! -x /usr/sbin/pgbouncer ]; then
    echo "services: installing PgBouncer" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
  fi
  mkdir -p "$PGBOUNCER_DIR"
  cat >"$PGBOUNCER_DIR/userlist.txt" <<'USERS'
"postgres" ""
USERS
  cat >"$PGBOUNCER_DIR/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $PGBOUNCER_DIR/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 10
server_idle_timeout = 30
ignore_startup_parameters = extra_float_digits
logfile = $PGBOUNCER_DIR/pgbouncer.log
pidfile = $PGBOUNCER_DIR/pgbouncer.pid
INI
  chown -R postgres:postgres "$PGBOUNCER_DIR"
  ln -sf "$PGBOUNCER_DIR/pgbouncer.log" "$state/pgbouncer.log"
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- /usr/sbin/pgbouncer -d "$PGBOUNCER_DIR/pgbouncer.ini"
  else
    /usr/sbin/pgbouncer -d "$PGBOUNCER_DIR/pgbouncer.ini"
  fi
  wait_port pgbouncer "$PGBOUNCER_PORT"
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

echo "services: postgresql :5432, pgbouncer :$PGBOUNCER_PORT (transaction mode), mariadb :3306, moto :$MOTO_PORT, azurite :$AZURITE_PORT are up"
