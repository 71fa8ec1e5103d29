"""Mounts: what file systems the container sees, and how they are attached.

A mount in config.json (runtime-spec config.md "Mounts") becomes a :class:`MountPlan`: the
options split into mount(2) flags, propagation flags and file-system data, validated before
any call, described in one line for ``--explain`` and carried out by :func:`perform` onto a
mount point resolved inside the rootfs (see paths.py). Bind mounts ignore most flags on the
first call, so read-only and similar flags are applied by a second, remounting call
(mount(2), "Creating a bind mount"). Introduced by the jail stage (2001).
"""

from __future__ import annotations

import os

from minirun.errors import MiniRunError
from minirun.isolation import paths, syscalls
from minirun.isolation.syscalls import (
    MS_BIND,
    MS_PRIVATE,
    MS_REC,
    MS_REMOUNT,
    MS_SHARED,
    MS_SLAVE,
    MS_UNBINDABLE,
    describe_mount_flags,
)
from minirun.record import record

# option -> (flags to set, flags to clear)
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (syscalls.MS_RDONLY, 0), "rw": (0, syscalls.MS_RDONLY),
    "nosuid": (syscalls.MS_NOSUID, 0), "suid": (0, syscalls.MS_NOSUID),
    "nodev": (syscalls.MS_NODEV, 0), "dev": (0, syscalls.MS_NODEV),
    "noexec": (syscalls.MS_NOEXEC, 0), "exec": (0, syscalls.MS_NOEXEC),
    "sync": (0x10, 0), "async": (0, 0x10),
    "dirsync": (0x80, 0),
    "remount": (MS_REMOUNT, 0),
    "mand": (0x40, 0), "nomand": (0, 0x40),
    "noatime": (0x400, 0), "atime": (0, 0x400),
    "nodiratime": (0x800, 0), "diratime": (0, 0x800),
    "relatime": (0x200000, 0), "norelatime": (0, 0x200000),
    "strictatime": (0x1000000, 0), "nostrictatime": (0, 0x1000000),
    "lazytime": (0x2000000, 0), "nolazytime": (0, 0x2000000),
    "silent": (0x8000, 0), "loud": (0, 0x8000),
    "nosymfollow": (0x100, 0), "symfollow": (0, 0x100),
    "bind": (MS_BIND, 0), "rbind": (MS_BIND | MS_REC, 0),
}

_PROPAGATION_OPTIONS: dict[str, int] = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC,
}

# Options of other runtimes that minirun does not carry out; refused rather than ignored.
UNSUPPORTED_OPTIONS = frozenset({"tmpcopyup", "idmap", "ridmap", "copy-symlink", "rro"})

# Flags a bind remount may change; others (like MS_REC) belong to the first call only.
_REMOUNT_MASK = (syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV
                 | syscalls.MS_NOEXEC | 0x400 | 0x800 | 0x200000 | 0x1000000 | 0x100)


def known_options() -> set[str]:
    """The mount options minirun carries out (for ``minirun features``)."""
    return set(_FLAG_OPTIONS) | set(_PROPAGATION_OPTIONS)


@record
class MountPlan:
    """One mount, ready to carry out. ``source`` is a host path for binds."""

    destination: str
    fstype: str | None
    source: str | None
    flags: int
    propagation: int
    data: str
    where: str  # the config path it came from, e.g. mounts[3]

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & MS_BIND)

    def describe(self) -> str:
        kind = "bind" if self.is_bind else self.fstype or "none"
        text = f"mount({self.source or 'none'} -> {self.destination}, {kind}, " \
               f"{describe_mount_flags(self.flags)}"
        if self.data:
            text += f", {self.data}"
        return text + ")"


def plan(destination: str, fstype: str | None, source: str | None,
         options: tuple[str, ...], where: str, bundle: str) -> MountPlan:
    """Split ``options`` into flags and data; raise ValueError naming a bad option."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for option in options:
        if option in _FLAG_OPTIONS:
            on, off = _FLAG_OPTIONS[option]
            flags = (flags | on) & ~off
        elif option in _PROPAGATION_OPTIONS:
            propagation = _PROPAGATION_OPTIONS[option]
        elif option in UNSUPPORTED_OPTIONS:
            raise ValueError(f"option {option!r} is not supported by minirun")
        else:
            data.append(option)
    if fstype == "bind":
        flags |= MS_BIND
    if flags & MS_BIND:
        if not source:
            raise ValueError("a bind mount needs a source")
        source = os.path.normpath(os.path.join(bundle, source))
        if not os.path.lexists(source):
            raise ValueError(f"bind source {source} does not exist")
    return MountPlan(destination, fstype, source, flags, propagation, ",".join(data), where)


def perform(mount: MountPlan, root_fd: int) -> None:
    """Create the mount point inside the root (never following a link out) and mount."""
    try:
        if mount.is_bind and not os.path.isdir(mount.source or ""):
            target_fd = paths.make_file(root_fd, mount.destination)
        else:
            target_fd = paths.make_dirs(root_fd, mount.destination)
    except MiniRunError as error:  # name the config entry whose mount point failed
        raise MiniRunError(f"{mount.where} mount point {mount.destination}: {error.message}",
                           error.hint) from None
    target = paths.fd_path(target_fd)
    try:
        first = mount.flags if not mount.is_bind else mount.flags & (MS_BIND | MS_REC)
        syscalls.mount(mount.source, target, mount.fstype, first, mount.data or None,
                       shown_target=f"{mount.destination} ({mount.where})")
        extra = mount.flags & _REMOUNT_MASK
        if (mount.is_bind and extra) or mount.propagation:
            # target_fd still names the directory under the new mount: open the new mount
            # itself, or the remount below fails with EINVAL (it is not a mount point).
            os.close(target_fd)
            target_fd = -1
            target_fd = paths.open_in_root(root_fd, mount.destination, os.O_PATH)
            target = paths.fd_path(target_fd)
        # A bind mount takes its other flags only from a remount of the new mount.
        if mount.is_bind and extra:
            _remount(target, extra, mount.destination)
        if mount.propagation:
            syscalls.mount(None, target, None, mount.propagation,
                           shown_target=mount.destination)
    finally:
        if target_fd >= 0:
            os.close(target_fd)


def _remount(target: str, flags: int, shown: str) -> None:
    # Locked flags (nodev, nosuid, noexec inherited from a mount made in another user
    # namespace) must be kept, or the kernel answers EPERM: read them from statvfs.
    st = os.statvfs(target)
    keep = 0
    for bit, st_bit in ((syscalls.MS_NOSUID, os.ST_NOSUID), (syscalls.MS_NODEV, os.ST_NODEV),
                        (syscalls.MS_NOEXEC, os.ST_NOEXEC)):
        if st.f_flag & st_bit:
            keep |= bit
    syscalls.mount(None, target, None, MS_REMOUNT | MS_BIND | flags | keep, shown_target=shown)


def make_readonly(path: str) -> None:
    """Bind ``path`` onto itself and remount it read-only (for readonlyPaths, root.readonly)."""
    syscalls.mount(path, path, None, MS_BIND | MS_REC)
    _remount(path, syscalls.MS_RDONLY, path)


def mask(path: str) -> None:
    """Hide ``path``: /dev/null over a file, an empty read-only tmpfs over a directory.
    A path that does not exist needs no mask."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if os.path.isdir(path) and not os.path.islink(path):
        syscalls.mount("tmpfs", path, "tmpfs", syscalls.MS_RDONLY, "size=0k")
    elif not os.path.islink(path) and st:
        syscalls.mount("/dev/null", path, None, MS_BIND)
