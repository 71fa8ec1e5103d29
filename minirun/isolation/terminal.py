"""The container's terminal: a pseudo-terminal whose master end goes to the caller.

With ``process.terminal`` the container gets a new pty from its own devpts instance; the slave
becomes its controlling terminal and stdio, and the master is sent over the console socket
that the caller (conmon, containerd-shim, a test) listens on, as SCM_RIGHTS ancillary data
(unix(7)). See pty(7) and the runtime-spec's "Console socket".
"""

from __future__ import annotations

import fcntl
import os
import socket
import termios

from minirun.errors import MiniRunError, SyscallError


def attach(console: int, uid: int, gid: int) -> None:
    if console < 0:
        raise MiniRunError("process.terminal is set but no console socket was given")
    try:
        master, slave = os.openpty()
    except OSError as error:
        raise SyscallError("openpty", "/dev/ptmx (needs a devpts mount at /dev/pts)",
                           error.errno or 0) from None
    os.fchown(slave, uid, gid)
    with socket.socket(fileno=os.dup(console)) as sock:
        socket.send_fds(sock, [b"/dev/ptmx"], [master])
    os.close(master)
    os.close(console)
    os.setsid()
    try:
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    except OSError as error:
        raise SyscallError("ioctl", "TIOCSCTTY", error.errno or 0) from None
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
