#!/usr/bin/env bash
# Installs Debian's chromium for the report's browser test when it is missing.
# Exit 0 when chromium is there afterwards; otherwise exit 1 with the reason on stderr
# (the test then skips with that reason). Idempotent and quiet when chromium is present.
set -u

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is not installed and this machine has no apt-get to install Debian's chromium" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium is not installed and installing it with apt-get needs root (run: apt-get install chromium)" >&2
  exit 1
fi

log=$(mktemp)
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian's chromium (apt-get, once per machine)..." >&2
# fonts-dejavu-core: without any font the report's text renders as empty boxes
if nice -n 15 apt-get update -qq >"$log" 2>&1 &&
   nice -n 15 apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >>"$log" 2>&1 &&
   command -v chromium >/dev/null 2>&1; then
  rm -f "$log"
  exit 0
fi
echo "apt-get could not install chromium:" >&2
tail -n 5 "$log" >&2
rm -f "$log"
exit 1
