#!/usr/bin/env bash
# Make the end-to-end tests runnable: a Chromium for Playwright to drive.
# `playwright install` downloads a browser build from outside the package registries, which this
# project cannot rely on; Debian's chromium package is used instead (at /usr/bin/chromium).
# Idempotent: does nothing when the browser is already there.
set -euo pipefail

CHROMIUM="${CHAINLIT_ORM_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
  echo "setup-e2e: chromium present at $CHROMIUM"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-e2e: $CHROMIUM is missing and installing it needs root (apt-get install chromium)" >&2
  exit 1
fi

echo "setup-e2e: installing Debian's chromium (about 40 s)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null

if [ ! -x "$CHROMIUM" ]; then
  echo "setup-e2e: apt-get installed chromium but $CHROMIUM does not exist" >&2
  exit 1
fi
"$CHROMIUM" --version 2>/dev/null || true
