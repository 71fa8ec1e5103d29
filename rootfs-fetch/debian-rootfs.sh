#!/bin/sh
# Make a Debian bookworm minbase root file system in DEST with debootstrap. The debootstrap
# result is cached (default /var/cache/minirun/debian-bookworm) and copied from there on
# later calls, so only the first call needs the network (Debian's mirror) and minutes.
# Usage: debian-rootfs.sh DEST [CACHE]
set -eu

dest=${1:?usage: debian-rootfs.sh DEST [CACHE]}
cache=${2:-${MINIRUN_DEBIAN_CACHE:-/var/cache/minirun/debian-bookworm}}
mirror=${MINIRUN_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ ! -e "$cache/.complete" ]; then
    # Build next to the cache and rename, so an interrupted debootstrap never looks finished.
    partial="$cache.partial.$$"
    rm -rf "$partial"
    mkdir -p "$(dirname "$cache")"
    debootstrap --variant=minbase bookworm "$partial" "$mirror"
    # apt's package lists and downloaded .debs are not part of a useful image.
    rm -rf "$partial/var/cache/apt/archives/"*.deb "$partial/var/lib/apt/lists/"*
    touch "$partial/.complete"
    rm -rf "$cache"
    mv "$partial" "$cache"
fi

mkdir -p "$dest"
# tar keeps owners (numerically), modes, hard links and device nodes.
tar -C "$cache" --exclude=./.complete -cf - . | tar -C "$dest" -xpf - --numeric-owner
echo "debian bookworm minbase rootfs in $dest"
