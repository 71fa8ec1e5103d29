"""Unpack layer tar streams into a directory, so that no entry can write outside it.

Every entry name is split into components; ``..`` is refused (naming the entry) and ``/`` and
``.`` are dropped, so absolute names land inside the rootfs. The parent directory of an entry
is opened with openat2(RESOLVE_IN_ROOT) on the rootfs fd: symlinks planted by this or an earlier
layer are followed with chroot semantics (``/tmp/x`` means ``ROOTFS/tmp/x``), never out. The
entry itself is then made with the *at() calls on that parent fd, without following a final
symlink (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW). An entry that names the rootfs itself (``.``, ``./``,
``/``) may only be a directory (its mode and owner are applied), anything else is refused.

Whiteouts follow image-spec layer.md: ``DIR/.wh.NAME`` removes NAME from *lower* layers, an
opaque marker ``DIR/.wh..wh..opq`` removes every lower child of DIR; entries of the same layer
are never hidden, wherever the marker sits in the tar. Markers never land on disk. In overlay
mode (one directory per layer, for overlayfs lowerdir=) they become overlayfs whiteouts instead:
a 0/0 character device, and the ``trusted.overlay.opaque=y`` xattr (kernel
Documentation/filesystems/overlayfs.rst).

Device nodes and setuid/setgid bits of files (and file capabilities) are kept only when asked
for; ownership is always kept (minirun unpacks as root).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from minirun.errors import EXIT_USAGE, MiniRunError

from .digest import Readable, reporting
from .safepath import open_dir, open_in_root
from .source import Image, Layer, LayerStream, verify_image

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_CHUNK = 1 << 20  # file data copied per read()
# tarfile's stream buffer: it re-slices the buffer on every 512-byte header read, so a large
# buffer costs copies (1 MiB made a Debian layer 0.6 s slower than 64 KiB; measured).
_TAR_BUFFER = 64 << 10
_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class UnpackError(MiniRunError):
    """A layer entry is refused, or making it failed."""

    exit_code = EXIT_USAGE  # a bad input file, like a bad config.json


class Mode(Enum):
    FLATTEN = "flatten"  # all layers into one directory
    OVERLAY = "overlay"  # one layer into its own directory; whiteouts as overlayfs sees them


@dataclass(frozen=True)
class Options:
    keep_devices: bool = False
    keep_setuid: bool = False


@dataclass
class Stats:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    devices_skipped: int = 0
    setuid_stripped: int = 0


def split_name(name: str, what: str) -> list[str]:
    """Components of an entry name; ``..`` anywhere is refused, ``/`` and ``.`` dropped."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnpackError(f"{what}: entry {name!r} climbs out of the rootfs with '..'")
    if any("\0" in p for p in parts):
        raise UnpackError(f"{what}: entry {name!r} contains a NUL byte")
    return parts


class LayerWriter:
    """Applies the entries of one layer to ``root``. Not thread-safe; one per layer."""

    def __init__(self, root: Path, mode: Mode, options: Options, what: str) -> None:
        self.root = root
        self.mode = mode
        self.options = options
        self.what = what
        self.stats = Stats()
        self._root_fd = open_dir(str(root))
        self._parents: dict[str, int] = {}
        self._written: set[str] = set()  # every entry path of this layer
        self._ancestors: set[str] = set()  # every directory above such a path
        self._dir_times: list[tuple[str, int]] = []
        self._whiteouts: set[str] = set()  # overlay mode: 0/0 devices made by this layer

    # --- entry dispatch ------------------------------------------------------------------

    def apply(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.stats.entries += 1
        parts = split_name(member.name, self.what)
        try:
            self._apply(tar, member, parts)
        except OSError as exc:
            raise UnpackError(
                f"{self.what}: entry {member.name!r}: {exc.strerror or exc}") from exc

    def _apply(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str]) -> None:
        if not parts:
            self._root_entry(member)
            return
        base = parts[-1]
        parent = "/".join(parts[:-1])
        if base.startswith(WHITEOUT_PREFIX):
            self._marker(parent, base, member.name)
            return
        self._record(parts)
        self._make(tar, member, parent, base, "/".join(parts))

    def _record(self, parts: list[str]) -> None:
        self._written.add("/".join(parts))
        for end in range(1, len(parts)):
            self._ancestors.add("/".join(parts[:end]))

    def _make(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: str, base: str,
              path: str) -> None:
        parent_fd = self._parent(parent, member.name)
        if member.isdir():
            self._directory(parent_fd, base, path, member)
        elif member.isreg():
            self._regular(tar, parent_fd, base, member)
        elif member.issym():
            self._symlink(parent_fd, base, member)
        elif member.islnk():
            self._hardlink(parent_fd, base, member)
        elif member.ischr() or member.isblk():
            self._device(parent_fd, base, member)
        elif member.isfifo():
            self._replace(parent_fd, base)
            os.mkfifo(base, 0o600, dir_fd=parent_fd)
            self._set_owner_mode(parent_fd, base, member)
        else:
            log.debug("%s: entry %r of tar type %r skipped", self.what, member.name, member.type)

    def _root_entry(self, member: tarfile.TarInfo) -> None:
        # CVE-2021-29136 (umoci): an entry named "." or "/" replaced the rootfs by a symlink.
        if not member.isdir():
            raise UnpackError(
                f"{self.what}: entry {member.name!r} would replace the rootfs directory itself"
            )
        fd = os.open(".", _DIR_READ, dir_fd=self._root_fd)
        try:
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, self._mode_bits(member))
        finally:
            os.close(fd)
        self._dir_times.append(("", int(member.mtime)))

    # --- kinds of entries ----------------------------------------------------------------

    def _directory(self, parent_fd: int, base: str, path: str, member: tarfile.TarInfo) -> None:
        existing = _lstat(parent_fd, base)
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            self._replace(parent_fd, base)
            os.mkdir(base, 0o700, dir_fd=parent_fd)
            if path in self._whiteouts:
                self._set_opaque(parent_fd, base)
        fd = os.open(base, _DIR_READ | os.O_NOFOLLOW, dir_fd=parent_fd)
        try:
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, self._mode_bits(member))
        finally:
            os.close(fd)
        self._dir_times.append((path, int(member.mtime)))

    def _regular(self, tar: tarfile.TarFile, parent_fd: int, base: str,
                 member: tarfile.TarInfo) -> None:
        self._replace(parent_fd, base)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent_fd)
        try:
            source = tar.extractfile(member)
            assert source is not None
            while chunk := source.read(_CHUNK):
                os.write(fd, chunk)  # regular files take whole writes
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, self._mode_bits(member))
            self._xattrs(fd, member)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += member.size

    def _symlink(self, parent_fd: int, base: str, member: tarfile.TarInfo) -> None:
        self._replace(parent_fd, base)
        # Stored verbatim: the target is only ever resolved inside the rootfs later.
        os.symlink(member.linkname, base, dir_fd=parent_fd)
        os.chown(base, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        os.utime(base, (member.mtime, member.mtime), dir_fd=parent_fd, follow_symlinks=False)
        self._forget_parents(keep=parent_fd)

    def _hardlink(self, parent_fd: int, base: str, member: tarfile.TarInfo) -> None:
        target = split_name(member.linkname, self.what)
        if not target:
            raise UnpackError(f"{self.what}: hard link {member.name!r} points at the rootfs")
        try:
            source_fd = open_in_root(self._root_fd, "/".join(target[:-1]), _DIR_PATH)
        except OSError as exc:
            raise UnpackError(f"{self.what}: hard link {member.name!r} -> "
                              f"{member.linkname!r}: {exc.strerror}") from exc
        try:
            if _same_inode(source_fd, target[-1], parent_fd, base):
                return
            self._replace(parent_fd, base)
            # linkat(2) without AT_SYMLINK_FOLLOW: a symlink is linked, not followed.
            os.link(target[-1], base, src_dir_fd=source_fd, dst_dir_fd=parent_fd,
                    follow_symlinks=False)
        finally:
            os.close(source_fd)

    def _device(self, parent_fd: int, base: str, member: tarfile.TarInfo) -> None:
        if not self.options.keep_devices:
            self.stats.devices_skipped += 1
            log.debug("%s: device node %r skipped", self.what, member.name)
            return
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        self._replace(parent_fd, base)
        os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                 dir_fd=parent_fd)
        self._set_owner_mode(parent_fd, base, member)

    def _set_owner_mode(self, parent_fd: int, base: str, member: tarfile.TarInfo) -> None:
        os.chown(base, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        # The node was just made by us and is not a symlink, so following is safe here.
        os.chmod(base, self._mode_bits(member), dir_fd=parent_fd)

    def _mode_bits(self, member: tarfile.TarInfo) -> int:
        mode = member.mode & 0o7777
        # On a directory setgid only makes new entries inherit its group (Debian's /var/mail
        # relies on it) and setuid means nothing: neither grants privilege, both are kept.
        privileged = 0 if member.isdir() else mode & 0o6000
        if privileged and not self.options.keep_setuid:
            self.stats.setuid_stripped += 1
            mode &= ~0o6000
        return mode

    def _xattrs(self, fd: int, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key.removeprefix("SCHILY.xattr.")
            # File capabilities grant privilege like setuid does; trusted.* could steer
            # overlayfs. Only user.* is always kept.
            if name.startswith("user.") or (
                    name == "security.capability" and self.options.keep_setuid):
                os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))

    # --- whiteouts -----------------------------------------------------------------------

    def _marker(self, parent: str, base: str, name: str) -> None:
        if base == OPAQUE_MARKER:
            self._opaque(parent, name)
            return
        target = base.removeprefix(WHITEOUT_PREFIX)
        if target.startswith(WHITEOUT_PREFIX):
            log.debug("%s: aufs metadata entry %r skipped", self.what, name)
            return
        if not target:
            raise UnpackError(f"{self.what}: whiteout {name!r} names nothing")
        path = f"{parent}/{target}" if parent else target
        if path in self._written:
            return  # a whiteout never hides an entry of its own layer
        try:
            parent_fd = self._parent(parent, name, create=self.mode is Mode.OVERLAY)
        except FileNotFoundError:
            return  # nothing below to hide
        try:
            self._whiteout(parent_fd, target, path)
        finally:
            self._forget_parents()  # cached fds may name what was just removed

    def _whiteout(self, parent_fd: int, target: str, path: str) -> None:
        if self.mode is Mode.FLATTEN:
            self._remove_lower(parent_fd, target, path)
            return
        # Overlay mode: the directory holds this layer only; lower layers are hidden by a
        # 0/0 character device (or an opaque directory if this layer put entries below).
        existing = _lstat(parent_fd, target)
        if existing is None:
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent_fd)
            self._whiteouts.add(path)
            self._written.add(path)  # an opaque marker later in this layer must keep it
        elif stat.S_ISDIR(existing.st_mode):
            self._set_opaque(parent_fd, target)  # holds entries of this layer: hide the rest

    def _opaque(self, parent: str, name: str) -> None:
        try:
            parent_fd = self._parent(parent, name, create=self.mode is Mode.OVERLAY)
        except FileNotFoundError:
            return
        fd = os.open(".", _DIR_READ, dir_fd=parent_fd)
        try:
            for child in os.listdir(fd):
                self._remove_lower(fd, child, f"{parent}/{child}" if parent else child)
            if self.mode is Mode.OVERLAY:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)
            self._forget_parents()

    def _remove_lower(self, dir_fd: int, name: str, path: str) -> None:
        """Remove what lower layers put at ``path``, sparing this layer's own entries."""
        if path in self._ancestors:
            try:
                fd = os.open(name, _DIR_READ | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError:
                return
            try:
                for child in os.listdir(fd):
                    self._remove_lower(fd, child, f"{path}/{child}")
            finally:
                os.close(fd)
        elif path not in self._written:
            _remove(dir_fd, name)

    def _set_opaque(self, parent_fd: int, base: str) -> None:
        fd = os.open(base, _DIR_READ | os.O_NOFOLLOW, dir_fd=parent_fd)
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)

    # --- parents -------------------------------------------------------------------------

    def _parent(self, parent: str, entry: str, create: bool = True) -> int:
        """An O_PATH fd of ``parent``, resolved inside the rootfs, made when missing."""
        cached = self._parents.get(parent)
        if cached is not None:
            return cached
        try:
            fd = open_in_root(self._root_fd, parent, _DIR_PATH)
        except FileNotFoundError:
            if not create:
                raise
            fd = self._make_parents(parent, entry)
        except OSError as exc:
            raise UnpackError(f"{self.what}: entry {entry!r}: parent {parent!r}: "
                              f"{exc.strerror}") from exc
        self._parents[parent] = fd
        return fd

    def _make_parents(self, parent: str, entry: str) -> int:
        parts = parent.split("/")
        fd = os.dup(self._root_fd)
        try:
            for end, part in enumerate(parts, start=1):
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    self._replace_whiteout(fd, part, "/".join(parts[:end]))
                try:
                    # Resolve again from the root: the component may be a symlink in the root.
                    next_fd = open_in_root(self._root_fd, "/".join(parts[:end]), _DIR_PATH)
                except OSError as exc:
                    raise UnpackError(
                        f"{self.what}: entry {entry!r}: parent {'/'.join(parts[:end])!r} "
                        f"{_why_not_dir(fd, part, exc)}") from exc
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _replace_whiteout(self, dir_fd: int, name: str, path: str) -> None:
        """Overlay mode: this layer removed ``path`` and now puts a directory there."""
        if path in self._whiteouts:
            _remove(dir_fd, name)
            os.mkdir(name, 0o755, dir_fd=dir_fd)
            self._set_opaque(dir_fd, name)
            self._whiteouts.discard(path)

    def _replace(self, parent_fd: int, base: str) -> None:
        existing = _lstat(parent_fd, base)
        if existing is None:
            return
        if not stat.S_ISREG(existing.st_mode):
            self._forget_parents(keep=parent_fd)  # cached fds may lie below what goes
        _remove(parent_fd, base, existing)

    def _forget_parents(self, keep: int | None = None) -> None:
        """Close the cached parent fds (all but ``keep``, which the caller still uses)."""
        kept = {}
        for parent, fd in self._parents.items():
            if fd == keep:
                kept[parent] = fd
            else:
                os.close(fd)
        self._parents = kept

    # --- end of layer --------------------------------------------------------------------

    def finish(self) -> None:
        """Directory times last: making entries inside a directory changes its mtime."""
        self._forget_parents()
        for path, mtime in reversed(self._dir_times):
            try:
                fd = open_in_root(self._root_fd, path, _DIR_READ)
            except OSError:
                continue  # removed or replaced later in this layer
            try:
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)

    def close(self) -> None:
        self._forget_parents()
        os.close(self._root_fd)


def _why_not_dir(dir_fd: int, name: str, exc: OSError) -> str:
    existing = _lstat(dir_fd, name)
    if existing is not None and stat.S_ISLNK(existing.st_mode):
        target = os.readlink(name, dir_fd=dir_fd)
        return f"is a symlink to {target!r}, which is missing inside the rootfs"
    if existing is not None and not stat.S_ISDIR(existing.st_mode):
        return "exists and is not a directory"
    return f"cannot be made: {exc.strerror}"


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(dir_fd: int, name: str, existing: os.stat_result | None = None) -> None:
    existing = existing or _lstat(dir_fd, name)
    if existing is None:
        return
    if stat.S_ISDIR(existing.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based, does not follow symlinks
    else:
        os.unlink(name, dir_fd=dir_fd)


def _same_inode(src_fd: int, src: str, dst_fd: int, dst: str) -> bool:
    a = _lstat(src_fd, src)
    b = _lstat(dst_fd, dst)
    return a is not None and b is not None and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# --- whole layers and images -------------------------------------------------------------


class ZeroTail:
    """A tar stream that may stop right after its last member's data: some writers (umoci 0.4)
    leave out the padding and the two zero end-of-archive blocks, which tarfile needs. Zeros
    are supplied after the real end; :meth:`check` then makes sure no member *data* came from
    them, so only the missing trailer is forgiven, never a truncated file. The hashes are
    taken below this wrapper, over the real bytes only.
    """

    _TAIL = 20 * 512

    def __init__(self, raw: Readable, what: str) -> None:
        self._raw = raw
        self._what = what
        self.real_size = 0
        self._tail_left = self._TAIL
        self.padded = False

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        if data:
            self.real_size += len(data)
            return data
        self.padded = True
        count = self._tail_left if size < 0 else min(size, self._tail_left)
        self._tail_left -= count
        return bytes(count)

    def check(self, member: tarfile.TarInfo | None) -> None:
        if not self.padded or member is None:
            return
        end = member.offset_data + (member.size if member.isreg() else 0)
        if end > self.real_size:
            raise UnpackError(f"{self._what}: the tar stream ends inside entry {member.name!r}")
        log.debug("%s: tar stream without end-of-archive blocks", self._what)


def read_members(stream: Readable, what: str) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The members of an uncompressed tar stream, read once, in order."""
    tail = ZeroTail(stream, what)
    last = None
    try:
        with tarfile.open(fileobj=tail, mode="r|", bufsize=_TAR_BUFFER) as tar:  # type: ignore[call-overload]
            for member in tar:
                last = member
                yield tar, member
    except tarfile.TarError as exc:
        raise UnpackError(f"{what}: not a valid tar stream: {exc}") from exc
    tail.check(last)


def unpack_stream(stream: Readable, root: Path, mode: Mode, options: Options,
                  what: str) -> Stats:
    """Apply one uncompressed layer tar stream to ``root``."""
    writer = LayerWriter(root, mode, options, what)
    try:
        for tar, member in read_members(stream, what):
            writer.apply(tar, member)
        writer.finish()
    finally:
        writer.close()
    if writer.stats.devices_skipped:
        log.info("%s: %d device nodes skipped (--keep-devices keeps them)", what,
                 writer.stats.devices_skipped)
    if writer.stats.setuid_stripped:
        log.info("%s: setuid/setgid bits removed from %d entries (--keep-setuid keeps them)",
                 what, writer.stats.setuid_stripped)
    return writer.stats


def unpack_layer(image: Image, layer: Layer, root: Path, mode: Mode, options: Options) -> Stats:
    """Stream one layer of ``image`` into ``root``; its hashes are checked at the end too."""
    with reporting("unpack"), LayerStream(image, layer) as stream:
        try:
            stats = unpack_stream(stream.tar, root, mode, options, layer.what)
            stream.finish()
        except MiniRunError:
            stream.check_compressed()  # a wrong blob explains a broken stream best
            raise
    return stats


def unpack_image(image: Image, root: Path, options: Options, verify: bool = True) -> Stats:
    """Flatten every layer of ``image`` into the existing empty directory ``root``.

    With ``verify`` (the default) every layer's digest, size and diff_id is checked in a first
    pass that writes nothing, so a bad image is refused before any file is made.
    """
    if verify:
        verify_image(image)
    total = Stats()
    for layer in image.layers:
        log.info("unpacking %s", layer.what)
        stats = unpack_layer(image, layer, root, Mode.FLATTEN, options)
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
    return total


def is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False

