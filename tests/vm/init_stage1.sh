#!/bin/busybox sh
# Stage 1 of the test VM's init, run by the kernel from the initramfs (rdinit=/init).
# It builds the guest's root: the host's root shared read-only over 9p, with a tmpfs
# overlay on top so the guest can write anywhere and the host sees none of it. Then it
# hands over to stage 2 inside that root. Output goes to the console (ttyS0).
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "minirun-vm stage 1: $*"
    echo o > /proc/sysrq-trigger
    sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The build wrote the modules in load order, dependencies first (from modules.dep): insmod
# does not resolve dependencies, and virtio must be in before virtio_pci and 9pnet_virtio.
while read -r module; do
    insmod "/modules/$module" || fail "insmod $module"
done < /modules/order

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower \
    || fail "mount of the host root over 9p"
mount -t tmpfs -o mode=0755 overlay-upper /upper
mkdir /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot \
    || fail "overlay mount on the host root"
mount -t tmpfs -o mode=0755,nosuid,nodev run /newroot/run

# Stage 2 and its busybox live on the new /run: the host's root may have neither.
mkdir /newroot/run/minirun-vm
cp /bin/busybox /stage2 /newroot/run/minirun-vm/

mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /run/minirun-vm/busybox sh /run/minirun-vm/stage2
