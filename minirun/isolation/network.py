"""The network namespace's one built-in interface: loopback.

A new network namespace (jail stage, 2001) has only ``lo``, and it is down. One ioctl
(SIOCSIFFLAGS, netdevice(7)) brings it up; that is all a container needs to talk to itself.
Veth pairs and bridges, which need netlink, use pyroute2 and are imported only there.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from minirun.errors import SyscallError

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def bring_up(name: str = "lo") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", name.encode(), 0)
        try:
            flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(),
                                                        flags | IFF_UP))
        except OSError as error:
            raise SyscallError("ioctl", f"{name}, SIOCSIFFLAGS, IFF_UP",
                               error.errno or 0) from None
