#!/usr/bin/env bash
# A three-node MariaDB Galera Cluster on this host (Debian's galera-4 and rsync), on free
# loopback ports, with its data under DIR; the system server on 3306 is never touched.
#   scripts/galera.sh start DIR   # prints one mysql:// URL per node, leaves them running
#   scripts/galera.sh stop DIR    # stops every node and removes DIR
# The tests start their own (tests/galera.py, which this runs).
set -euo pipefail
exec python3 "$(dirname "$0")/../tests/galera.py" "$@"
