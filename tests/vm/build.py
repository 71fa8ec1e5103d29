"""Prepare the test VM's kernel and initramfs in a cache directory (never in git).

The kernel is Debian's ``linux-image-amd64``: downloaded with ``apt-get download`` and
unpacked with ``dpkg-deb -x`` into a scratch directory, never installed on the host. The
build is keyed on the kernel package's version and on the init scripts, so a second call
only reads a stamp file.

What ends up in the cache:

- ``vmlinux``: the uncompressed ELF kernel. qemu boots it directly through its PVH entry
  note, which skips the BIOS and the in-guest decompression (several seconds under TCG).
- ``initramfs.cpio``: busybox-static, the stage-1 and stage-2 init scripts, and the kernel
  modules that mount the host's root over 9p with an overlay on top, in load order.
- ``stamp``: what the files were built from.
"""

from __future__ import annotations

import fcntl
import hashlib
import lzma
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from minirun.errors import MiniRunError

DEFAULT_CACHE = Path("/var/cache/minirun/vm")
KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")  # from busybox-static: a static binary works in any root
HERE = Path(__file__).resolve().parent

# What stage 1 needs to mount the host root: virtio-pci for the 9p device, the 9p client and
# overlayfs. Their dependencies are added from modules.dep, dependencies first.
ROOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

# Raise this when the layout of the cache or the way it is built changes.
BUILDER_VERSION = "1"

XZ_MAGIC = b"\xfd7zXZ\x00"
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point qemu's -kernel looks for


class VmBuildError(MiniRunError):
    """The VM's kernel or initramfs could not be prepared."""


@dataclass(frozen=True)
class VmImage:
    """The files qemu needs, all inside the cache directory."""

    kernel: Path
    initramfs: Path
    kernel_release: str
    key: str


def cache_dir() -> Path:
    return Path(os.environ.get("MINIRUN_VM_CACHE", str(DEFAULT_CACHE)))


def ensure_built(cache: Path | None = None, log: bool = False) -> VmImage:
    """Return the cached kernel and initramfs, building them first when missing or stale."""
    cache = cache or cache_dir()
    package, version = _kernel_package(cache)
    key = _build_key(package, version)
    image = _cached_image(cache, key)
    if image is not None:
        return image
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        # Another process may have finished the same build while this one waited.
        image = _cached_image(cache, key)
        if image is not None:
            return image
        return _build(cache, package, version, key, log)


def _kernel_package(cache: Path) -> tuple[str, str]:
    """The real kernel package behind the metapackage and its version, as apt sees them now."""
    stamp = _read_stamp(cache)
    if stamp is not None and not _apt_lists_changed_since(cache / "stamp"):
        # apt's answer only changes with its package lists; asking costs most of a second.
        return stamp["package"], stamp["version"]
    try:
        shown = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", KERNEL_METAPACKAGE],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        if stamp is not None:  # offline or no apt lists: the kernel built earlier still works
            return stamp["package"], stamp["version"]
        raise VmBuildError(
            f"apt-cache show {KERNEL_METAPACKAGE} failed: {error}",
            hint="run 'apt-get update' once so apt knows the kernel package",
        ) from error
    fields = dict(
        line.split(": ", 1) for line in shown.splitlines() if ": " in line and line[0] != " "
    )
    depends = fields.get("Depends", "")
    package = depends.split(",")[0].split("(")[0].strip()
    if not package.startswith("linux-image-") or "Version" not in fields:
        raise VmBuildError(
            f"apt-cache show {KERNEL_METAPACKAGE}: no kernel package in Depends: {depends!r}")
    return package, fields["Version"]


def _apt_lists_changed_since(stamp: Path) -> bool:
    built = stamp.stat().st_mtime
    lists = Path("/var/lib/apt/lists")
    try:
        return any(entry.stat().st_mtime > built for entry in lists.iterdir())
    except OSError:
        return True


def _build_key(package: str, version: str) -> str:
    digest = hashlib.sha256(BUILDER_VERSION.encode())
    for script in ("init_stage1.sh", "init_stage2.sh"):
        digest.update((HERE / script).read_bytes())
    return f"{package}={version} builder={digest.hexdigest()[:16]}"


def _read_stamp(cache: Path) -> dict[str, str] | None:
    try:
        lines = (cache / "stamp").read_text().splitlines()
    except OSError:
        return None
    stamp = dict(line.split("=", 1) for line in lines if "=" in line)
    needed = {"key", "package", "version", "release"}
    return stamp if needed <= stamp.keys() else None


def _cached_image(cache: Path, key: str) -> VmImage | None:
    stamp = _read_stamp(cache)
    if stamp is None or stamp["key"] != key:
        return None
    image = VmImage(cache / "vmlinux", cache / "initramfs.cpio", stamp["release"], key)
    return image if image.kernel.is_file() and image.initramfs.is_file() else None


class _locked:
    """An exclusive flock(2) on a file, so two test runs do not build at the same time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _build(cache: Path, package: str, version: str, key: str, log: bool) -> VmImage:
    started = time.monotonic()
    # A build killed half-way leaves its scratch directory (hundreds of MB): we hold the lock,
    # so no other build is using one.
    for stale in cache.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=cache) as scratch_name:
        scratch = Path(scratch_name)
        deb = _download(package, version, scratch, log)
        tree = scratch / "tree"
        _run(["dpkg-deb", "-x", str(deb), str(tree)])
        deb.unlink()
        release = _kernel_release(tree)
        _write_vmlinux(tree / "boot" / f"vmlinuz-{release}", scratch / "vmlinux")
        modules = _module_order(tree, release, ROOT_MODULES)
        _write_initramfs(scratch / "initramfs.cpio", tree / "lib" / "modules" / release, modules)
        # Replace the files first and the stamp last, so a crash leaves a stale stamp at most.
        (cache / "stamp").unlink(missing_ok=True)
        os.replace(scratch / "vmlinux", cache / "vmlinux")
        os.replace(scratch / "initramfs.cpio", cache / "initramfs.cpio")
        stamp = f"key={key}\npackage={package}\nversion={version}\nrelease={release}\n"
        stamp += "modules=" + " ".join(Path(m).name for m in modules) + "\n"
        (cache / "stamp").write_text(stamp)
    if log:
        print(f"built {cache}/vmlinux and initramfs.cpio from {package} {version} "
              f"in {time.monotonic() - started:.1f} s")
    return VmImage(cache / "vmlinux", cache / "initramfs.cpio", release, key)


def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as error:
        raise VmBuildError(f"{command[0]}: {error.strerror}",
                           hint="setup/apt-packages.txt lists what the VM needs") from error
    if done.returncode != 0:
        raise VmBuildError(f"{' '.join(command)} failed ({done.returncode}): "
                           f"{done.stderr.strip()[-500:]}")
    return done.stdout


def _download(package: str, version: str, into: Path, log: bool) -> Path:
    if log:
        print(f"downloading {package} {version} (about 70 MB)")
    # The scratch directory is root's: apt would warn that its _apt sandbox user cannot write
    # there, so download as root on purpose.
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"],
         cwd=into)
    debs = list(into.glob("*.deb"))
    if len(debs) != 1:
        raise VmBuildError(f"apt-get download {package}: expected one .deb, found {debs}")
    return debs[0]


def _kernel_release(tree: Path) -> str:
    releases = [path.name for path in (tree / "lib" / "modules").iterdir()]
    if len(releases) != 1:
        raise VmBuildError(f"{tree}/lib/modules: expected one kernel release, found {releases}")
    return releases[0]


def _write_vmlinux(vmlinuz: Path, target: Path) -> None:
    """Decompress the xz stream inside Debian's bzImage to the ELF kernel qemu boots via PVH."""
    data = vmlinuz.read_bytes()
    start = data.find(XZ_MAGIC)
    if start < 0:
        raise VmBuildError(f"{vmlinuz}: no xz stream inside (is the kernel compressed otherwise?)")
    # Only the first stream: padding and the bzImage's trailer follow it.
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    if not _has_pvh_note(elf):
        raise VmBuildError(f"{vmlinuz}: the decompressed kernel is not an ELF with a PVH note")
    target.write_bytes(elf)


def _has_pvh_note(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF has the Xen PVH entry note (see readelf -n)."""
    if elf[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        p_type, _flags, offset, _va, _pa, size = struct.unpack_from(
            "<IIQQQQ", elf, phoff + index * phentsize)
        if p_type == PT_NOTE and _notes_have(elf[offset:offset + size], XEN_ELFNOTE_PHYS32_ENTRY):
            return True
    return False


def _notes_have(notes: bytes, wanted: int) -> bool:
    position = 0
    while position + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from("<III", notes, position)
        name = notes[position + 12:position + 12 + namesz].rstrip(b"\0")
        if name == b"Xen" and kind == wanted:
            return True
        position += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _module_order(tree: Path, release: str, wanted: Iterable[str]) -> list[str]:
    """Module paths (relative to lib/modules/RELEASE) to insmod, dependencies first."""
    _run(["depmod", "-b", str(tree), release])
    depends: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (tree / "lib" / "modules" / release / "modules.dep").read_text().splitlines():
        module, _, rest = line.partition(":")
        depends[module] = rest.split()
        by_name[_module_name(module)] = module
    order: list[str] = []

    def visit(module: str) -> None:
        if module in order:
            return
        for dependency in depends[module]:
            visit(dependency)
        order.append(module)

    for name in wanted:
        if name not in by_name:
            raise VmBuildError(f"kernel {release}: module {name} not found in modules.dep")
        visit(by_name[name])
    return order


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def _write_initramfs(target: Path, module_root: Path, modules: list[str]) -> None:
    """An uncompressed newc cpio: TCG is slow at decompressing, and the archive is small."""
    archive = _Cpio()
    for directory in ("bin", "dev", "proc", "sys", "modules", "lower", "upper", "newroot"):
        archive.directory(directory)
    # The kernel opens /dev/console for init before anything is mounted.
    archive.char_device("dev/console", 0o600, 5, 1)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    archive.file("init", (HERE / "init_stage1.sh").read_bytes(), 0o755)
    archive.file("stage2", (HERE / "init_stage2.sh").read_bytes(), 0o755)
    names = []
    for index, module in enumerate(modules):
        name = f"{index:02d}-{Path(module).name}"
        archive.file(f"modules/{name}", (module_root / module).read_bytes(), 0o644)
        names.append(name)
    archive.file("modules/order", ("\n".join(names) + "\n").encode(), 0o644)
    target.write_bytes(archive.finish())


class _Cpio:
    """Writes the "newc" cpio format the kernel unpacks (see the kernel's
    Documentation/driver-api/early-userspace/buffer-format.rst)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.inode = 1

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755, b"")

    def file(self, name: str, data: bytes, mode: int) -> None:
        self._entry(name, 0o100000 | mode, data)

    def char_device(self, name: str, mode: int, major: int, minor: int) -> None:
        self._entry(name, 0o020000 | mode, b"", major, minor)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return b"".join(self.parts)

    def _entry(self, name: str, mode: int, data: bytes, major: int = 0, minor: int = 0) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % field for field in fields)
        self.inode += 1
        self.parts += [header, encoded, _pad(len(header) + len(encoded)), data, _pad(len(data))]


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def remove_cache(cache: Path | None = None) -> None:
    """Delete the cache directory (the next run builds again)."""
    shutil.rmtree(cache or cache_dir(), ignore_errors=True)
