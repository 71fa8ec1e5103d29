#!/bin/sh
# Install everything minirun needs on Debian 12, put `minirun` on root's PATH, build the demo
# bundle, and run the demo stage by stage.
#   sudo ./setup.sh            install, then run the demo
#   sudo ./setup.sh --no-demo  install only (the test command uses this)
set -eu
top=$(cd "$(dirname "$0")" && pwd)
demo=yes
[ "${1:-}" = "--no-demo" ] && demo=no

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (sudo ./setup.sh): it installs Debian packages" >&2
    exit 1
fi

# 1. Debian packages: only the missing ones, so a second run takes a second.
packages=$(grep -v '^[[:space:]]*#' "$top/setup/apt-packages.txt" | tr -s ' \n' ' ')
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup.sh: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Daemons from these packages (registry, containerd) are started by the tests themselves.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi

# 2. Test tools (ruff, mypy) in a venv over Debian's python3 and its packages. minirun
#    itself needs none of them and runs on /usr/bin/python3 directly.
tools=/var/cache/minirun/devtools
if ! [ -x "$tools/bin/ruff" ] || ! [ -x "$tools/bin/mypy" ]; then
    echo "setup.sh: making the test tools venv in $tools"
    /usr/bin/python3 -m venv --system-site-packages "$tools"
    "$tools/bin/pip" install -q --disable-pip-version-check "ruff>=0.6" "mypy>=1.10"
fi

# 3. minirun on root's PATH: a link to this checkout's entry point.
ln -sf "$top/bin/minirun" /usr/local/bin/minirun

# 4. The demo bundle: busybox-static and minirun's default config.
bundle=/var/lib/minirun/demo
if ! [ -x "$bundle/rootfs/bin/busybox" ]; then
    rm -rf "$bundle"
    mkdir -p "$bundle"
    "$top/rootfs-fetch/busybox-rootfs.sh" "$bundle/rootfs" >/dev/null
fi
if [ "$demo" = yes ]; then
    exec "$top/stages/demo.sh" "$bundle"
fi
echo "setup.sh: ready; minirun is $(command -v minirun)"
