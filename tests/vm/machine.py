"""Boot the throw-away cgroup v2 VM, run one command in it as root, and power it off.

The guest's root is the host's root, read-only over 9p, with a tmpfs overlay on top: every
host path (this checkout, /usr/bin/python3, /var/cache/minirun) is visible at the same place,
and whatever the guest writes is gone when it stops. cgroup v2 is mounted on /sys/fs/cgroup
with every controller (the kernel runs with cgroup_no_v1=all). There is no network device.

Three serial ports carry the results: ttyS0 the kernel console (to a log file), ttyS1 the
command's output (to qemu's stdout, a pipe read here), ttyS2 the exit status (to a file).
Bulk results come back through ``share``: a host directory mounted read-write at the same
path in the guest.

The host root is mounted with cache=loose (much faster under TCG): a host file changed while
a VM runs may look unchanged inside it. Each run boots a fresh VM, so that only matters for
files the host edits during a run; exchange such files through ``share`` (no cache).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from minirun.errors import MiniRunError

from .build import cache_dir, ensure_built

QEMU = "qemu-system-x86_64"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KEEP_CONSOLE_LOGS = 20

# Measured on this kind of host: KVM does not work (paravirtualised host), so TCG with
# one thread per vCPU. quiet keeps the console short; panic=-1 with -no-reboot turns a guest
# panic into qemu exiting; the rest shave seconds off a TCG boot.
KERNEL_ARGS = (
    "console=ttyS0 quiet panic=-1 oops=panic nokaslr mitigations=off cgroup_no_v1=all "
    "random.trust_cpu=on tsc=reliable no_timer_check rdinit=/init"
)


class VmError(MiniRunError):
    """The VM did not boot, or did not report the command's exit status."""

    def __init__(
        self, message: str, console_log: Path, output: str = "", qemu_pid: int = 0
    ) -> None:
        hint = f"kernel console log: {console_log}" if console_log.exists() else None
        super().__init__(message, hint)
        self.console_log = console_log
        self.output = output
        self.qemu_pid = qemu_pid


class VmTimeout(VmError):
    """The command did not finish in time; qemu was killed."""


@dataclass(frozen=True)
class VmResult:
    status: int
    """Exit status of the command in the guest (128+N when killed by signal N)."""
    output: str
    """Its standard output and standard error, interleaved."""
    console_log: Path
    """The guest kernel's console (boot messages, OOM kills, oopses)."""
    seconds: float
    """Wall time from starting qemu to qemu's exit."""
    qemu_pid: int
    """The pid qemu had (it has exited by now)."""


def run(
    command: Sequence[str],
    share: Path | None = None,
    timeout: float = 600.0,
    memory: str = "1G",
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_output: Callable[[bytes], None] | None = None,
    console_log: Path | None = None,
) -> VmResult:
    """Run ``command`` as root in a fresh VM and return its exit status and output.

    ``cwd`` (default: the current directory) is the command's working directory in the guest,
    where the host's tree is visible at the same paths. PATH is the system's (so ``python3`` is
    /usr/bin/python3), and MINIRUN_IN_VM=1 is set, plus ``env``. ``share`` is mounted
    read-write at its own path. ``on_output`` receives the output as it arrives.
    qemu is always killed by its pid before this returns or raises, and the job directory is
    removed; only the console log is kept (in the cache's logs/, the last 20).
    Not yet: a caller killed with SIGKILL leaves its small job directory in TMPDIR (its qemu
    dies with it); remove this note when stale job directories are swept at start.
    The command's stdin is /dev/null and it has no terminal.
    Raises VmTimeout after ``timeout`` seconds, VmError when the VM reports no exit status.
    """
    if not command:
        raise ValueError("run() needs a command")
    image = ensure_built()
    console_log = console_log or _new_console_log()
    with tempfile.TemporaryDirectory(prefix="minirun-vm-") as job_name:
        job = Path(job_name)
        _write_job(job, command, cwd or Path.cwd(), env or {}, share)
        qemu = _qemu_command(image.kernel, image.initramfs, job, share, memory, console_log)
        return _boot(qemu, job, timeout, console_log, on_output)


def _new_console_log() -> Path:
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    old = sorted(logs.glob("console-*.log"))
    for stale in old[: max(0, len(old) - KEEP_CONSOLE_LOGS + 1)]:
        stale.unlink(missing_ok=True)
    return logs / f"console-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def _write_job(
    job: Path, command: Sequence[str], cwd: Path, env: Mapping[str, str], share: Path | None
) -> None:
    # The path travels on the kernel command line, which splits on white space.
    if any(character.isspace() for character in str(job)):
        raise MiniRunError(f"job directory {job}: white space in the path (set TMPDIR)")
    # TERM=dumb: the output port is a tty, but nobody reads it as a terminal.
    variables = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                 "MINIRUN_IN_VM": "1", **env}
    lines = [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    lines.append(f"cd {shlex.quote(str(cwd))} || exit 125")
    lines.append("exec " + shlex.join(command))
    (job / "job.sh").write_text("\n".join(lines) + "\n")
    if share is not None:
        if not share.is_dir():
            raise MiniRunError(f"share {share}: not a directory")
        (job / "share").write_text(str(share.resolve()))
    # The job directory must be readable in the guest, where qemu's 9p server reads it as root.
    job.chmod(0o755)


def _qemu_option(value: Path) -> str:
    """qemu separates options with commas: a comma inside a value is written twice."""
    return str(value).replace(",", ",,")


def _qemu_command(
    kernel: Path, initramfs: Path, job: Path, share: Path | None, memory: str, console: Path
) -> list[str]:
    command = [
        QEMU, "-nodefaults", "-no-user-config", "-no-reboot",
        "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", memory,
        "-display", "none", "-monitor", "none", "-nic", "none",
        "-kernel", str(kernel), "-initrd", str(initramfs),
        "-append", f"{KERNEL_ARGS} minirun.job={job}",
        "-serial", f"file:{console}", "-serial", "stdio", "-serial", f"file:{job}/status",
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
    ]
    if share is not None:
        command += [
            "-fsdev", f"local,id=share,path={_qemu_option(share.resolve())},"
            "security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=share,mount_tag=share",
        ]
    return command


def _die_with_parent(parent: int) -> None:
    """Runs in the child before exec: qemu gets SIGKILL if this Python process dies
    (prctl(2) PR_SET_PDEATHSIG), so a killed test run leaves no VM behind."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl: then nobody would ever kill this VM.
    if os.getppid() != parent:
        os._exit(1)


def _boot(
    qemu: list[str], job: Path, timeout: float, console_log: Path,
    on_output: Callable[[bytes], None] | None,
) -> VmResult:
    started = time.monotonic()
    chunks: list[bytes] = []
    process = subprocess.Popen(
        qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=functools.partial(_die_with_parent, os.getpid()),
    )
    assert process.stdout is not None and process.stderr is not None
    reader = threading.Thread(target=_pump, args=(process.stdout, chunks, on_output), daemon=True)
    reader.start()
    stderr: list[bytes] = []
    errors = threading.Thread(target=_pump, args=(process.stderr, stderr, None), daemon=True)
    errors.start()
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        reader.join()
        errors.join()
    seconds = time.monotonic() - started
    output = b"".join(chunks).decode(errors="replace")
    status_file = job / "status"
    status = status_file.read_text(errors="replace").strip() if status_file.exists() else ""
    if timed_out and not status:
        raise VmTimeout(f"the VM did not finish in {timeout:.0f} s; qemu was killed",
                        console_log, output, process.pid)
    if not status.isdigit():
        qemu_error = b"".join(stderr).decode(errors="replace").strip()
        raise VmError(
            f"the VM reported no exit status (qemu exited with {process.returncode}"
            + (f": {qemu_error[-300:]})" if qemu_error else ")")
            + f"; console ends: {_tail(console_log)}",
            console_log, output, process.pid,
        )
    return VmResult(int(status), output, console_log, seconds, process.pid)


def _pump(stream: object, into: list[bytes], echo: Callable[[bytes], None] | None) -> None:
    fd = stream.fileno()  # type: ignore[attr-defined]
    while chunk := os.read(fd, 65536):
        into.append(chunk)
        if echo is not None:
            echo(chunk)
    stream.close()  # type: ignore[attr-defined]


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no console log)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(empty)"
