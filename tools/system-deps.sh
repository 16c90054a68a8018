#!/usr/bin/env bash
# Debian packages the tests use for real (a PostgreSQL server for the usage ledger, headless
# Chromium and its driver for the model page): installed with apt-get when missing.
# `make test` runs this; without root or sudo it says what is missing and those tests skip.
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo"
  else
    echo "system-deps: cannot install ${missing[*]} (not root, no sudo): their tests will skip" >&2
    exit 0
  fi
fi
if ! { $sudo apt-get update -q && \
       DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"; }; then
  echo "system-deps: apt-get could not install ${missing[*]}: their tests will skip" >&2
fi
