# Stage 2 of the test VM's init: PID 1 in the overlay root (see init_stage1.sh).
# It mounts what a Linux system with cgroup v2 has, runs the job that the host wrote to
# $job/job.sh, sends the job's output to ttyS1 and its exit status to ttyS2, and powers off.
# The host passes the job directory on the kernel command line as minirun.job=DIR.
bb=/run/minirun-vm/busybox
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

finish() {
    $bb sync
    echo "$1" > /dev/ttyS2
    echo o > /proc/sysrq-trigger
    $bb sleep 60
}

fail() {
    echo "minirun-vm stage 2: $*"
    finish 125
}

$bb mkdir -p /dev/pts /dev/shm /dev/mqueue
$bb mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
$bb ln -sf pts/ptmx /dev/ptmx
$bb mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
$bb mount -t mqueue mqueue /dev/mqueue
# The kernel runs with cgroup_no_v1=all, so every controller is free for the v2 hierarchy.
# nsdelegate makes cgroup namespaces delegation boundaries, as systemd mounts it.
$bb mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || fail "mount of cgroup2"
$bb mount -t tmpfs -o mode=1777 var-tmp /var/tmp
$bb ip link set lo up
$bb hostname minirun-vm

job=
for word in $($bb cat /proc/cmdline); do
    case "$word" in
        minirun.job=*) job=${word#minirun.job=} ;;
    esac
done
[ -f "$job/job.sh" ] || fail "no job: minirun.job=$job"

# The read-write share: one host directory, mounted at the same path. No cache, so what the
# guest writes is on the host when the VM powers off.
if [ -f "$job/share" ]; then
    share=$($bb cat "$job/share")
    $bb mkdir -p "$share"
    $bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none share "$share" \
        || fail "mount of the share $share"
fi

# Raw mode: no \n -> \r\n translation of the job's output on its way to the host.
$bb stty -F /dev/ttyS1 raw -echo
$bb sh "$job/job.sh" > /dev/ttyS1 2>&1 < /dev/null
finish $?
