#!/bin/sh
# The demo: one busybox container, run at every stage, showing what each stage changes.
#   stages/demo.sh BUNDLE      (setup.sh runs it on /var/lib/minirun/demo)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
bundle=${1:?usage: demo.sh BUNDLE}
minirun="$top/bin/minirun"

probe='echo "  pid of the shell : $$"
echo "  hostname         : $(hostname)"
echo "  network devices  : $(ls /sys/class/net 2>/dev/null | tr "\n" " " || true)"
echo "  mounts seen      : $(cat /proc/self/mountinfo 2>/dev/null | wc -l)"
echo "  processes seen   : $(ls /proc 2>/dev/null | grep -c "^[0-9]")"
echo "  CapEff           : $(grep CapEff /proc/self/status 2>/dev/null | cut -f2)"'
"$minirun" spec -b "$bundle" --force -- sh -c "$probe"

echo "The host: pid $$, hostname $(hostname), $(ls /sys/class/net | wc -l) network devices," \
     "$(wc -l < /proc/self/mountinfo) mounts"
for stage in chroot jail namespaces oci; do
    echo
    echo "== minirun run --stage $stage $bundle"
    MINIRUN_LOG=warning "$minirun" run --stage "$stage" "$bundle" demo
done

echo
echo "== minirun run --stage cgroups $bundle"
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
    "$top/stages/cgroups/demo-limits.sh" "$bundle"
else
    echo "This host has no usable cgroup v2 (hybrid or v1 mode); the cgroups stage runs in the" \
         "test VM instead (first boot builds it: about a minute)."
    cd "$top" && /usr/bin/python3 -m tests.vm run --timeout 300 -- \
        "$top/stages/cgroups/demo-limits.sh" "$bundle"
fi
