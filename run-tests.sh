#!/bin/sh
# Run every check minirun has: install what is missing, then ruff, mypy and the test suite
# (real containers; the cgroup v2 tests boot a throw-away VM).   sudo ./run-tests.sh [PYTEST ARGS]
set -eu
top=$(cd "$(dirname "$0")" && pwd)
cd "$top"
"$top/setup.sh" --no-demo
tools=/var/cache/minirun/devtools/bin
echo "== ruff"
"$tools/ruff" check minirun rootfs-fetch tests benchmarks
echo "== mypy"
"$tools/mypy" minirun rootfs-fetch/rootfs_fetch
echo "== pytest"
exec "$tools/python" -m pytest -p no:cacheprovider "$@"
