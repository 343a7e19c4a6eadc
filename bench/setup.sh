#!/usr/bin/env bash
# What the end-to-end benchmark (python -m bench.e2e) needs beyond Python packages:
# Debian's wrk, the load generator. bench/e2e.py runs this when wrk is not on PATH.
# Python packages: pip install -e ".[bench]".
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine: update, then try again.
$sudo apt-get install -y -qq wrk || { $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk; }
command -v wrk
