#!/bin/sh
# Make a minimal busybox root file system in DEST: Debian's static busybox, one link per
# applet, the account files and the directories a container expects.
# Usage: busybox-rootfs.sh DEST
set -eu

dest=${1:?usage: busybox-rootfs.sh DEST}
busybox=/bin/busybox

# Only the static build works in an empty rootfs (no loader, no libc); busybox-static ships it.
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
    if ! ldd "$busybox" 2>&1 | grep -q 'not a dynamic executable'; then
        echo "busybox-rootfs.sh: $busybox is not static; apt-get install busybox-static" >&2
        exit 1
    fi
fi

mkdir -p "$dest"
for dir in bin sbin usr/bin usr/sbin etc proc sys dev tmp root var/tmp; do
    mkdir -p "$dest/$dir"
done
chmod 1777 "$dest/tmp" "$dest/var/tmp"
chmod 0700 "$dest/root"

cp "$busybox" "$dest/bin/busybox"
chmod 0755 "$dest/bin/busybox"

# --list-full prints each applet with its install directory (bin/sh, usr/bin/env, ...).
"$busybox" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$dest/$(dirname "$applet")"
    ln -sf /bin/busybox "$dest/$applet"
done

cat > "$dest/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$dest/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
echo minirun > "$dest/etc/hostname"
echo "busybox rootfs in $dest"
