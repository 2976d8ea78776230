#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests
# (tests/browser/). Installs the `chromium` package with apt-get when it is missing;
# Playwright's own browser download is not needed. Exits 0 when Chromium is there.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "Chromium is missing and apt-get is not available: install Chromium so that" \
    "$CHROMIUM exists (the browser tests skip without it)." >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "Chromium is missing; run: sudo apt-get install -y chromium" >&2
    exit 1
  fi
fi

echo "Installing Debian's chromium (for the browser tests)..." >&2
export DEBIAN_FRONTEND=noninteractive
# A stale package list is the usual reason the install fails: update, then install.
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2

if [ ! -x "$CHROMIUM" ]; then
  echo "apt-get finished but $CHROMIUM is still missing" >&2
  exit 1
fi
"$CHROMIUM" --version >&2 || true
