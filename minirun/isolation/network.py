"""The network namespace's one built-in interface: loopback.

A new network namespace (jail stage, 2001) has only ``lo``, and it is down. One ioctl
(SIOCSIFFLAGS, netdevice(7)) brings it up; that is all a container needs to talk to itself.
Not yet: veth pairs and bridges (netlink; pyroute2 is the library chosen for them).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

from minirun.errors import SyscallError

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


AF_INET = 2
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000


def bring_up(name: str = "lo") -> None:
    # A plain datagram socket is the handle these ioctls need; made through libc so the
    # run path does not import Python's socket module (a measurable part of start-up).
    libc = ctypes.CDLL(None, use_errno=True)
    sock = libc.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)
    if sock < 0:
        raise SyscallError("socket", "AF_INET, SOCK_DGRAM", ctypes.get_errno())
    try:
        request = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))
    except OSError as error:
        raise SyscallError("ioctl", f"{name}, SIOCSIFFLAGS, IFF_UP", error.errno or 0) from None
    finally:
        os.close(sock)
