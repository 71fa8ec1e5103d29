#!/bin/sh
# A limit biting: the same bounded overload at stage jail (nothing stops it) and at stage
# cgroups (memory.max and pids.max stop it). Run on a cgroup v2 host or in the test VM only.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
bundle=${1:?usage: demo-limits.sh BUNDLE}
minirun="$top/bin/minirun"
work=$(mktemp -d /tmp/minirun-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/b" && ln -s "$bundle/rootfs" "$work/b/rootfs"

# The overloads end by themselves: the memory hog holds 200 MB of "y" lines in a shell
# variable, then exits; the fork bomb starts 40 sleepers of 3 s and counts the forks that
# worked ($! changes only when a fork succeeds).
hog='a=$(yes | head -c 200000000); echo "  memory hog held ${#a} bytes"'
forks='n=0; last=; for i in $(seq 40); do sleep 3 & if [ "$!" != "$last" ]; then n=$((n+1)); last=$!; fi; done 2>/dev/null; echo "  started $n of 40 processes"; wait'
config() {  # config ARGS-JSON RESOURCES-JSON
    "$minirun" spec -b "$work/b" --force -- sh -c "$1" >/dev/null
    /usr/bin/python3 - "$work/b/config.json" "$2" <<'PY'
import json, sys
path, resources = sys.argv[1], json.loads(sys.argv[2])
config = json.load(open(path))
config["root"]["path"] = "rootfs"
config["linux"]["resources"] = resources
json.dump(config, open(path, "w"), indent=2)
PY
}
for stage in jail cgroups; do
    echo "-- stage $stage, memory limit 32 MiB: a memory hog"
    config "$hog" '{"memory": {"limit": 33554432, "swap": 33554432}}'
    MINIRUN_LOG=warning "$minirun" run --stage "$stage" "$work/b" "hog-$stage"
    echo "   minirun exited with $?"
    echo "-- stage $stage, pids limit 10: forty processes"
    config "$forks" '{"pids": {"limit": 10}}'
    MINIRUN_LOG=warning "$minirun" run --stage "$stage" "$work/b" "forks-$stage"
    echo "   minirun exited with $?"
done
