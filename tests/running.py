"""A container started in the background, for tests that signal or kill minirun mid-run.

:class:`Running` starts ``minirun run`` with debug logging and waits for the runtime's line
that says the container process has called execve, so a signal sent afterwards reaches the
program and not the set-up. Leaving the ``with`` block ends minirun (by its pid) if a test
stopped early, and fails the test if any of minirun's children outlived it.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import psutil
from support import MINIRUN

_RUNNING = re.compile(r"container process (\d+) is running")

# Run minirun with descriptors 3..12 open on a host directory, as a careless caller (or a
# runtime with a leak, CVE-2024-21626) would hand them down; exec keeps the pid.
_LEAK = ("import os, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
         "for number in range(3, 13):\n"
         "    if number != fd:\n"
         "        os.dup2(fd, number)\n"
         "os.execv(sys.argv[2], sys.argv[2:])\n")


def leaking_fds(directory: str | Path) -> list[str]:
    """A command prefix that runs the rest with fds 3..12 open on ``directory``."""
    return ["/usr/bin/python3", "-I", "-c", _LEAK, str(directory)]


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout: float = 5) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


class Running:
    """``minirun run ARGS`` in the background; ``container_pid`` is the program's host pid."""

    def __init__(self, *args: str, prefix: list[str] | None = None,
                 timeout: float = 30) -> None:
        self.proc = subprocess.Popen(
            [*(prefix or []), str(MINIRUN), *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "MINIRUN_LOG": "debug"})
        self.stderr = ""
        self.container_pid = self._wait_running(timeout)
        # minirun's children: the init process and the container process.
        self.children = psutil.Process(self.proc.pid).children(recursive=True)
        self.descendants = [child.pid for child in self.children]

    def _wait_running(self, timeout: float) -> int:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.stderr += chunk.decode(errors="replace")
            match = _RUNNING.search(self.stderr)
            if match:
                return int(match.group(1))
        self.kill()
        raise AssertionError(f"the container did not start:\n{self.stderr}")

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 20) -> tuple[int, str, str]:
        """Wait for minirun to end; return its exit status, stdout and stderr."""
        self.proc.wait(timeout=timeout)
        out = self._drain()
        return self.proc.returncode, out, self.stderr

    def _drain(self, timeout: float = 2) -> str:
        """Read what minirun printed; a surviving container may hold the pipes open, so give
        up after ``timeout`` rather than wait for end-of-file."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        streams = {self.proc.stdout.fileno(): b"", self.proc.stderr.fileno(): b""}
        open_fds = set(streams)
        deadline = time.monotonic() + timeout
        while open_fds and time.monotonic() < deadline:
            ready, _, _ = select.select(list(open_fds), [], [], deadline - time.monotonic())
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    streams[fd] += chunk
                else:
                    open_fds.discard(fd)
        self.stderr += streams[self.proc.stderr.fileno()].decode(errors="replace")
        return streams[self.proc.stdout.fileno()].decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.kill()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        left = wait_gone(self.descendants)
        # End what minirun left running (psutil checks the start time, so a reused pid is
        # never hit), then fail the test if it had not failed already.
        for child in self.children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        if left and kind is None:
            raise AssertionError(f"container processes outlived minirun: {left}")
