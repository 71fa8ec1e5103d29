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

# The overloads end by themselves. The memory hog holds 64 MiB in one awk string (a shell
# variable filled from a pipe would do too, but takes minutes in the emulated test VM). The
# fork bomb starts 40 sleepers of 3 s from a subshell (busybox sh exits when a fork fails, so
# only the subshell dies), notes each started pid in /tmp, counts them with shell built-ins
# (no fork needed) and waits by exec-ing the last sleep. `touch /dev/null`: before stage
# namespaces /dev is an empty tmpfs, and sh opens /dev/null for every background job.
hog='awk '\''BEGIN { s = sprintf("%67108864s", ""); print "  memory hog held", length(s), "bytes" }'\'
forks='touch /dev/null; ( for i in $(seq 40); do sleep 3 & echo $! >> /tmp/started; done ) 2>/dev/null; n=0; while read p; do n=$((n+1)); done < /tmp/started; echo "  started $n of 40 processes"; exec sleep 3'
config() {  # config SCRIPT RESOURCES-JSON
    "$minirun" spec -b "$work/b" --force -- sh -c "$1" >/dev/null
    /usr/bin/python3 - "$work/b/config.json" "$2" <<'PY'
import json, sys
path, resources = sys.argv[1], json.loads(sys.argv[2])
config = json.load(open(path))
config["root"]["path"] = "rootfs"
config["linux"]["resources"] = resources
# A fresh /tmp for each run, so the demo bundle's rootfs stays as it was.
config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                         "options": ["nosuid", "nodev", "mode=1777", "size=1m"]})
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
