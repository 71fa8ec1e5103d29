"""Image config -> runtime config.json, following image-spec conversion.md.

``User`` is resolved against the image's own /etc/passwd and /etc/group, read through
openat2(RESOLVE_IN_ROOT) so a symlinked /etc/passwd cannot make minirun read a host file. A
numeric string is always an id, never looked up as a name (runc CVE-2016-3697: a user named
``1000`` with uid 0).

``Volumes`` become tmpfs mounts: conversion.md asks that volume data not be written to the
rootfs; a tmpfs needs no directory of its own in the bundle or the store (prepare() builds
configs for read-only layer stores) and leaves nothing behind. Not yet: persistent or seeded
volumes (image content at the volume path is hidden by the tmpfs); remove this note when
minirun has named volumes.
"""

from __future__ import annotations

import copy
import logging
import os
import posixpath
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minirun.errors import ConfigError

from .safepath import open_dir, open_in_root

log = logging.getLogger(__name__)

MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to setresuid(2), so it is no valid id
_ACCOUNT_FILE_CAP = 4 << 20
_NUMERIC = re.compile(r"[0-9]+")
_DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

ANNOTATION_PREFIX = "org.opencontainers.image."


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


def base_config() -> dict[str, Any]:
    """minirun's default spec (minirun.spec.default_config when present), for conversion."""
    try:
        from minirun.spec import default_config
    except ImportError:
        return fallback_base_config()
    config: dict[str, Any] = default_config()
    return config


def fallback_base_config() -> dict[str, Any]:
    """The same defaults as ``minirun spec``, for when minirun.spec is not importable: no
    inheritable or ambient capabilities (crun CVE-2022-27650)."""
    return {
        "ociVersion": "1.2.0",
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": list(_DEFAULT_CAPS),
                             "effective": list(_DEFAULT_CAPS),
                             "permitted": list(_DEFAULT_CAPS)},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "minirun",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]},
    }


def convert(image_config: dict[str, Any], base_config: dict[str, Any],
            rootfs: Path | Sequence[Path] | None = None,
            where: str = "image config") -> dict[str, Any]:
    """Return a new config.json: ``base_config`` with the image's settings applied.

    ``rootfs`` is the unpacked rootfs, or the layer directories top-most first, where the
    image's /etc/passwd and /etc/group live; None means a ``User`` by name is an error.
    """
    settings = image_config.get("config") or {}
    if not isinstance(settings, dict):
        raise ConfigError(where, "config", "is not an object")
    config = copy.deepcopy(base_config)
    process = config.setdefault("process", {})
    _set_args(process, settings, where)
    process["env"] = merge_env(process.get("env") or [], _strings(settings, "Env", where))
    process["cwd"] = working_dir(settings.get("WorkingDir"), where)
    layers = [rootfs] if isinstance(rootfs, Path) else list(rootfs or [])
    user = resolve_user(str(settings.get("User") or ""), layers, where)
    process["user"] = {**process.get("user", {}), "uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        process["user"]["additionalGids"] = list(user.additional_gids)
    config["annotations"] = {**config.get("annotations", {}),
                             **image_annotations(image_config, settings, where)}
    config["mounts"] = list(config.get("mounts", [])) + volume_mounts(settings, where)
    return config


def _strings(settings: dict[str, Any], key: str, where: str) -> list[str]:
    value = settings.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(where, f"config.{key}", "must be a list of strings")
    return value


def _set_args(process: dict[str, Any], settings: dict[str, Any], where: str) -> None:
    args = _strings(settings, "Entrypoint", where) + _strings(settings, "Cmd", where)
    if args:
        process["args"] = args
    else:
        log.warning("%s: no Entrypoint or Cmd; keeping the default args %s", where,
                    process.get("args"))


def merge_env(base: list[str], image: list[str]) -> list[str]:
    """Image variables override base ones of the same name; order is kept."""
    merged: dict[str, str] = {}
    for entry in [*base, *image]:
        name = entry.partition("=")[0]
        merged[name] = entry
    return list(merged.values())


def working_dir(value: object, where: str) -> str:
    if value in (None, ""):
        return "/"
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(where, "config.WorkingDir", f"{value!r} is not an absolute path")
    path = posixpath.normpath(value).replace("//", "/")
    # runc CVE-2024-21626: a cwd under /proc (e.g. /proc/self/fd/7) can reach a host directory
    # through a leaked fd. /proc is mounted over the rootfs at start, so no image can have a
    # legitimate working directory there: refuse it here rather than pass it on.
    if path == "/proc" or path.startswith("/proc/"):
        raise ConfigError(where, "config.WorkingDir",
                          f"{value!r} is inside /proc; refusing a working directory there")
    return path


def image_annotations(image_config: dict[str, Any], settings: dict[str, Any],
                where: str) -> dict[str, str]:
    labels = settings.get("Labels") or {}
    if not isinstance(labels, dict):
        raise ConfigError(where, "config.Labels", "must be an object")
    result = {str(k): str(v) for k, v in labels.items()}
    derived: dict[str, str] = {}
    for field_name in ("os", "architecture", "variant", "os.version", "author", "created"):
        if image_config.get(field_name):
            derived[ANNOTATION_PREFIX + field_name] = str(image_config[field_name])
    ports = settings.get("ExposedPorts") or {}
    if not isinstance(ports, dict):
        raise ConfigError(where, "config.ExposedPorts", "must be an object")
    if ports:
        derived[ANNOTATION_PREFIX + "exposedPorts"] = ",".join(sorted(ports))
    if settings.get("StopSignal"):
        derived[ANNOTATION_PREFIX + "stopSignal"] = str(settings["StopSignal"])
    for key in derived.keys() & result.keys():
        log.warning("%s: label %s is replaced by the value derived from the config", where, key)
    result.update(derived)
    return result


def volume_mounts(settings: dict[str, Any], where: str) -> list[dict[str, Any]]:
    volumes = settings.get("Volumes") or {}
    if not isinstance(volumes, dict):
        raise ConfigError(where, "config.Volumes", "must be an object")
    mounts = []
    for destination in sorted(volumes):
        if not destination.startswith("/"):
            raise ConfigError(where, f"config.Volumes[{destination!r}]", "is not absolute")
        mounts.append({"destination": posixpath.normpath(destination), "type": "tmpfs",
                       "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]})
    return mounts


# --- users and groups --------------------------------------------------------------------


def parse_id(text: str, what: str, where: str) -> int:
    value = int(text)
    if value > MAX_ID:
        raise ConfigError(where, "config.User", f"{what} {text} is out of range (max {MAX_ID})")
    return value


def resolve_user(spec: str, layers: Sequence[Path], where: str) -> User:
    """Resolve ``user[:group]`` (names or ids) against the image's account files."""
    user_part, _, group_part = spec.partition(":")
    passwd = _records(read_image_file(layers, "etc/passwd"), 7)
    if not user_part or _NUMERIC.fullmatch(user_part):
        uid = parse_id(user_part or "0", "uid", where)
        entry = next((r for r in passwd if _num(r[2]) == uid), None)
    else:
        entry = next((r for r in passwd if r[0] == user_part), None)
        if entry is None or _num(entry[2]) is None:
            raise ConfigError(where, "config.User",
                              f"user {user_part!r} is not in the image's /etc/passwd")
        uid = parse_id(entry[2], "uid", where)
    name = entry[0] if entry else None
    gid = _num(entry[3]) if entry else 0
    groups = _records(read_image_file(layers, "etc/group"), 4) if (group_part or name) else []
    if group_part:
        return User(uid, _group_id(group_part, groups, where))
    primary = gid if gid is not None and gid <= MAX_ID else 0
    extra = [_num(g[2]) for g in groups if name and name in g[3].split(",")]
    additional = tuple(dict.fromkeys(
        g for g in extra if g is not None and g != primary and g <= MAX_ID))
    return User(uid, primary, additional)


def _group_id(group_part: str, groups: list[list[str]], where: str) -> int:
    if _NUMERIC.fullmatch(group_part):
        return parse_id(group_part, "gid", where)
    entry = next((g for g in groups if g[0] == group_part), None)
    if entry is None or _num(entry[2]) is None:
        raise ConfigError(where, "config.User",
                          f"group {group_part!r} is not in the image's /etc/group")
    return parse_id(entry[2], "gid", where)


def _num(text: str) -> int | None:
    return int(text) if _NUMERIC.fullmatch(text) else None


def _records(data: bytes | None, fields: int) -> list[list[str]]:
    if not data:
        return []
    records = []
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) >= fields - 1 and not line.startswith("#"):
            records.append((parts + [""] * fields)[:fields])
    return records


def read_image_file(layers: Sequence[Path], path: str) -> bytes | None:
    """A small file of the image: from the first layer directory (top-most first) that has
    it, stopping at an overlayfs whiteout; symlinks are followed inside each layer only."""
    for layer in layers:
        root_fd = open_dir(str(layer))
        try:
            found = _read_in_root(root_fd, path)
        finally:
            os.close(root_fd)
        if found is not None:
            return found or None
    return None


def _read_in_root(root_fd: int, path: str) -> bytes | None:
    """bytes if found, b"" if hidden by a whiteout (stop looking), None if absent."""
    try:
        fd = open_in_root(root_fd, path, os.O_PATH)
    except (FileNotFoundError, NotADirectoryError):
        return b"" if _hidden_below(root_fd, path) else None
    try:
        info = os.fstat(fd)
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            return b""
        if not stat.S_ISREG(info.st_mode) or info.st_size > _ACCOUNT_FILE_CAP:
            log.warning("%s in the image is not a small regular file; ignored", path)
            return b""
        # Re-open the O_PATH fd for reading: the file it names is already resolved.
        with open(f"/proc/self/fd/{fd}", "rb") as handle:
            return handle.read(_ACCOUNT_FILE_CAP)
    finally:
        os.close(fd)


def _hidden_below(root_fd: int, path: str) -> bool:
    """Does this layer hide ``path`` of lower layers: a parent whited out (a 0/0 character
    device) or made opaque (trusted.overlay.opaque=y)? Kernel overlayfs.rst, "whiteouts"."""
    parts = path.split("/")[:-1]
    for end in range(1, len(parts) + 1):
        try:
            fd = open_in_root(root_fd, "/".join(parts[:end]), os.O_PATH)
        except OSError:
            return False
        try:
            info = os.fstat(fd)
            if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                return True
            if stat.S_ISDIR(info.st_mode) and _opaque(fd):
                return True
        finally:
            os.close(fd)
    return False


def _opaque(fd: int) -> bool:
    try:  # fgetxattr(2) refuses O_PATH fds; the /proc link names the same directory
        return os.getxattr(f"/proc/self/fd/{fd}", "trusted.overlay.opaque") == b"y"
    except OSError:
        return False
