"""Helpers for the image tests (no tests here): real OCI layouts written with tarfile, copies
of the hostile cases from ../shared, and the victim-directory check.

Layers are real tar streams (gzip, zstd or plain) in real OCI layouts with correct digests,
so the code under test reads exactly what skopeo or a registry would hand it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CASES = SHARED / "cases"
VICTIM = Path("/tmp/minirun-victim")
for _entry in (str(REPO), str(REPO / "rootfs-fetch")):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)


# --- tar entries ---------------------------------------------------------------------------


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
          uid: int = 0, gid: int = 0, link: str = "", dev: tuple[int, int] = (0, 0),
          pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = 1_700_000_000
    info.linkname = link
    info.devmajor, info.devminor = dev
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def f(name: str, data: bytes = b"x", mode: int = 0o644, **kw: Any) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.REGTYPE, data, mode, **kw)


def d(name: str, mode: int = 0o755, **kw: Any) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.DIRTYPE, mode=mode, **kw)


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.SYMTYPE, mode=0o777, link=target)


def hard(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.LNKTYPE, link=target)


def tar_bytes(entries: Iterable[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def compress(data: bytes, compression: str) -> tuple[bytes, str]:
    base = "application/vnd.oci.image.layer.v1.tar"
    if compression == "gzip":
        return gzip.compress(data, mtime=0), base + "+gzip"
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data), base + "+zstd"
    return data, base


# --- OCI layouts -----------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layout:
    path: Path
    manifests: list[dict[str, Any]] = field(default_factory=list)

    def blob(self, data: bytes) -> str:
        digest = sha(data)
        target = self.path / "blobs" / "sha256" / digest.split(":")[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return digest

    def add_image(self, layers: list[list[tuple[tarfile.TarInfo, bytes]]],
                  config: dict[str, Any] | None = None, compression: str = "gzip",
                  tag: str | None = "latest", platform: dict[str, str] | None = None,
                  arch: str = "amd64") -> dict[str, Any]:
        descriptors, diff_ids = [], []
        for layer in layers:
            raw = tar_bytes(layer)
            blob, media_type = compress(raw, compression)
            diff_ids.append(sha(raw))
            descriptors.append({"mediaType": media_type, "digest": self.blob(blob),
                                "size": len(blob)})
        image_config = {"architecture": arch, "os": "linux", "config": config or {},
                        "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        config_blob = json.dumps(image_config).encode()
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": self.blob(config_blob), "size": len(config_blob)},
                    "layers": descriptors}
        manifest_blob = json.dumps(manifest).encode()
        descriptor: dict[str, Any] = {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": self.blob(manifest_blob), "size": len(manifest_blob)}
        if tag:
            descriptor["annotations"] = {"org.opencontainers.image.ref.name": tag}
        if platform:
            descriptor["platform"] = platform
        self.manifests.append(descriptor)
        self.write_index()
        return descriptor

    def write_index(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": self.manifests}
        (self.path / "index.json").write_text(json.dumps(index))


def make_layout(path: Path, layers: list[list[tuple[tarfile.TarInfo, bytes]]],
                config: dict[str, Any] | None = None, compression: str = "gzip") -> Path:
    Layout(path).add_image(layers, config, compression)
    return path


# --- cases and the victim --------------------------------------------------------------------


def copy_case(name: str, tmp: Path) -> Path:
    """Cases are read-only input (CI mounts shared/ read-only): tests work on a copy."""
    target = tmp / name
    shutil.copytree(CASES / name, target, symlinks=True)
    return target


def victim_prepare() -> None:
    subprocess.run(["sh", str(CASES / "tools" / "victim.sh"), "prepare"], check=True,
                   capture_output=True)


def victim_check() -> str:
    done = subprocess.run(["sh", str(CASES / "tools" / "victim.sh"), "check"],
                          capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


def tree(root: Path) -> list[str]:
    """Relative paths with their kind (d, f, l -> target, c major:minor), sorted."""
    lines = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            lines.append(f"{rel} l -> {path.readlink()}")
        elif path.is_dir():
            lines.append(f"{rel}/")
        elif path.is_char_device():
            rdev = path.lstat().st_rdev
            lines.append(f"{rel} c {rdev >> 8}:{rdev & 0xff}")
        else:
            lines.append(rel)
    return lines
