"""Images from files: OCI layouts, oci-archive tars and docker-save tars (legacy and OCI-style).

Everything read here is untrusted. Digests are checked against their grammar before they name a
blob (:mod:`rootfs_fetch.digest`); index, manifest and config are read with a size cap; blobs
inside a layout are opened with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), so no path outside
``<layout>/blobs/`` is ever opened; archives are read member by member, never extracted whole.
Layer streams are hashed as they are read (compressed digest and size, uncompressed diff_id).
"""

from __future__ import annotations

import json
import logging
import os
import platform as _platform
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from minirun.errors import EXIT_USAGE, ConfigError, MiniRunError, UnsupportedError

from .digest import (
    Digest,
    DigestError,
    Readable,
    VerifyingReader,
    parse_digest,
    read_capped,
    reporting,
)
from .safepath import open_beneath, open_dir

log = logging.getLogger(__name__)

METADATA_CAP = 4 << 20  # index, manifest and config JSON: generous, yet bounded
_NESTING_CAP = 4  # index -> index -> ... -> manifest

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEX_TYPES = {MT_OCI_INDEX, MT_DOCKER_LIST}
_MANIFEST_TYPES = {MT_OCI_MANIFEST, MT_DOCKER_MANIFEST}
_LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
_REF_ANNOTATIONS = ("org.opencontainers.image.ref.name", "io.containerd.image.name")

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class ImageError(MiniRunError):
    """The image is malformed or the reference names nothing in it."""

    exit_code = EXIT_USAGE  # a bad input file, like a bad config.json


# --- platforms ---------------------------------------------------------------------------

_MACHINE_TO_OCI = {
    "x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"), "i686": ("386", ""), "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, other: dict[str, Any]) -> bool:
        """Does a descriptor's ``platform`` object fit this (requested) platform?"""
        if other.get("os") != self.os or other.get("architecture") != self.architecture:
            return False
        theirs = str(other.get("variant") or ("v8" if self.architecture == "arm64" else ""))
        return not self.variant or theirs == self.variant


def host_platform() -> Platform:
    machine = _platform.machine()
    arch, variant = _MACHINE_TO_OCI.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


def parse_platform(text: str) -> Platform:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError("--platform", "", f"{text!r} is not os/arch[/variant]")
    return Platform(*parts)


# --- blob access -------------------------------------------------------------------------


class Blobs:
    """Where blobs come from: a layout directory or the members of a tar archive."""

    def open_digest(self, digest: Digest, what: str) -> IO[bytes]:
        raise NotImplementedError

    def open_member(self, name: str, what: str) -> IO[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LayoutBlobs(Blobs):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = open_dir(str(path))

    def open_digest(self, digest: Digest, what: str) -> IO[bytes]:
        return self.open_member(f"blobs/{digest.algorithm}/{digest.encoded}", what)

    def open_member(self, name: str, what: str) -> IO[bytes]:
        try:
            fd = open_beneath(self._fd, name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise ImageError(f"{self.path}: {name} ({what}): {exc.strerror}") from exc
        return os.fdopen(fd, "rb")

    def close(self) -> None:
        os.close(self._fd)


class TarBlobs(Blobs):
    """Members of an uncompressed archive; each read seeks to the member, nothing is extracted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tar = tarfile.open(path, mode="r:")  # noqa: SIM115 (closed by close())
        except (OSError, tarfile.TarError) as exc:
            raise ImageError(f"{path}: not a readable tar archive: {exc}") from exc
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in self._tar:
            self.members[posixpath.normpath(member.name).lstrip("/")] = member

    def open_digest(self, digest: Digest, what: str) -> IO[bytes]:
        return self.open_member(f"blobs/{digest.algorithm}/{digest.encoded}", what)

    def open_member(self, name: str, what: str) -> IO[bytes]:
        member = self._resolve(name, what)
        stream = self._tar.extractfile(member)
        assert stream is not None
        return stream

    def _resolve(self, name: str, what: str) -> tarfile.TarInfo:
        """The regular member ``name`` stands for. docker save stores a layer that two images
        share once and links the other name to it with a relative symlink member; such links
        are followed inside the archive only, a few times at most."""
        for _hop in range(8):
            member = self.members.get(name)
            if member is None:
                raise ImageError(f"{self.path}: no member {name} ({what})")
            if member.isreg():
                return member
            if not member.issym():
                raise ImageError(f"{self.path}: member {name} ({what}) is not a regular file")
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
            if target.startswith(("/", "../")) or target == "..":
                raise ImageError(f"{self.path}: member {name} ({what}) links out of the archive")
            name = target
        raise ImageError(f"{self.path}: member {name} ({what}): too many links")

    def close(self) -> None:
        self._tar.close()


# --- the image model ---------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    index: int
    media_type: str
    digest: Digest | None  # None for legacy docker-save, where only the diff_id is known
    size: int | None
    diff_id: Digest
    member: str  # where the blob lives (a digest path or a docker-save member name)
    image: str = ""  # the reference, for messages

    @property
    def what(self) -> str:
        where = f"{self.image}: " if self.image else ""
        return f"{where}layer {self.index} ({self.digest or self.member})"


@dataclass
class Image:
    reference: str
    config_digest: Digest
    config: dict[str, Any]
    layers: tuple[Layer, ...]
    blobs: Blobs = field(repr=False)

    @property
    def image_id(self) -> str:
        return str(self.config_digest)

    def close(self) -> None:
        self.blobs.close()

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_json(raw: IO[bytes] | Readable, what: str, digest: Digest | None = None,
               size: int | None = None) -> Any:
    reader: Readable = raw
    verifier = None
    if digest is not None:
        verifier = VerifyingReader(raw, digest, size, what)
        reader = verifier
    data = read_capped(reader, METADATA_CAP, what)
    if verifier is not None:
        verifier.verify()
    return _parse_json(data, what)


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ImageError(f"{what}: not valid JSON: {exc}") from exc


def _read_blob_json(blobs: Blobs, descriptor: dict[str, Any], what: str) -> tuple[Digest, Any]:
    digest = parse_digest(descriptor.get("digest"), f"{what} digest")
    size = _descriptor_size(descriptor, what)
    with blobs.open_digest(digest, what) as raw:
        return digest, _load_json(raw, f"{what} {digest}", digest, size)


def _descriptor_size(descriptor: dict[str, Any], what: str) -> int:
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what}: descriptor size {size!r} is not a non-negative integer")
    return size


# --- OCI index and manifest --------------------------------------------------------------


def _ref_names(descriptor: dict[str, Any]) -> list[str]:
    annotations = descriptor.get("annotations") or {}
    return [str(annotations[key]) for key in _REF_ANNOTATIONS if key in annotations]


def _tag_matches(descriptor: dict[str, Any], tag: str) -> bool:
    # "1.0" and "demo:1.0" both name docker.io/library/demo:1.0 (Docker's short names).
    return any(name == tag or name.endswith((":" + tag, "/" + tag))
               for name in _ref_names(descriptor))


def _expand(blobs: Blobs, manifests: list[Any], depth: int) -> Iterator[dict[str, Any]]:
    """Manifest descriptors of an index, nested indexes expanded in place."""
    for position, descriptor in enumerate(manifests):
        if not isinstance(descriptor, dict):
            raise ImageError(f"index manifests[{position}] is not an object")
        if descriptor.get("mediaType") in _INDEX_TYPES:
            if depth >= _NESTING_CAP:
                raise ImageError(f"indexes nested deeper than {_NESTING_CAP}")
            _, nested = _read_blob_json(blobs, descriptor, f"nested index {position}")
            for inner in _expand(blobs, nested.get("manifests") or [], depth + 1):
                yield {**inner, "annotations": {**(descriptor.get("annotations") or {}),
                                                **(inner.get("annotations") or {})}}
        else:
            yield descriptor


def select_manifest(blobs: Blobs, index: dict[str, Any], tag: str | None,
                    platform: Platform, where: str) -> dict[str, Any]:
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise ImageError(f"{where}: index.json lists no manifests")
    candidates = list(_expand(blobs, manifests, 0))
    if tag is not None:
        candidates = [d for d in candidates if _tag_matches(d, tag)]
        if not candidates:
            known = sorted({n for d in _expand(blobs, manifests, 0) for n in _ref_names(d)})
            raise ImageError(f"{where}: no image tagged {tag!r} (tags: {', '.join(known)})")
    fitting = [d for d in candidates if "platform" not in d or platform.matches(d["platform"])]
    if not fitting:
        offered = ", ".join(str(Platform(**_platform_fields(d))) for d in candidates)
        raise ImageError(f"{where}: no manifest for platform {platform} (offered: {offered})")
    if len(fitting) > 1:
        names = sorted({n for d in fitting for n in _ref_names(d)})
        raise ImageError(
            f"{where}: {len(fitting)} images fit; name one with :TAG "
            f"(tags: {', '.join(names) or 'none'})"
        )
    return fitting[0]


def _platform_fields(descriptor: dict[str, Any]) -> dict[str, str]:
    plat = descriptor.get("platform") or {}
    return {"os": str(plat.get("os", "?")), "architecture": str(plat.get("architecture", "?")),
            "variant": str(plat.get("variant", ""))}


def _layers_from_manifest(manifest: dict[str, Any], config: dict[str, Any],
                          where: str) -> tuple[Layer, ...]:
    if manifest.get("mediaType", MT_OCI_MANIFEST) not in _MANIFEST_TYPES:
        raise ImageError(f"{where}: manifest mediaType {manifest.get('mediaType')!r} unknown")
    descriptors = manifest.get("layers")
    if not isinstance(descriptors, list):
        raise ImageError(f"{where}: manifest has no layers list")
    diff_ids = _diff_ids(config, len(descriptors), where)
    layers = []
    for position, descriptor in enumerate(descriptors):
        what = f"{where}: manifest layers[{position}]"
        if not isinstance(descriptor, dict):
            raise ImageError(f"{what} is not an object")
        media_type = str(descriptor.get("mediaType", ""))
        if media_type not in _LAYER_TYPES:
            raise UnsupportedError(f"{what}: layer mediaType {media_type!r} is not supported")
        digest = parse_digest(descriptor.get("digest"), what)
        size = _descriptor_size(descriptor, what)
        member = f"blobs/{digest.algorithm}/{digest.encoded}"
        layers.append(Layer(position, media_type, digest, size, diff_ids[position], member,
                            where))
    return tuple(layers)


def _diff_ids(config: dict[str, Any], count: int, where: str) -> list[Digest]:
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageError(f"{where}: config rootfs.type is not 'layers'")
    values = rootfs.get("diff_ids")
    if not isinstance(values, list) or len(values) != count:
        raise ImageError(
            f"{where}: config rootfs.diff_ids has {len(values) if isinstance(values, list) else 0}"
            f" entries for {count} layers"
        )
    return [parse_digest(v, f"{where}: config rootfs.diff_ids[{i}]") for i, v in enumerate(values)]


def _open_oci(blobs: Blobs, reference: str, tag: str | None, platform: Platform) -> Image:
    where = reference
    with blobs.open_member("index.json", "index.json") as raw:
        index = _load_json(raw, f"{where}: index.json")
    if not isinstance(index, dict):
        raise ImageError(f"{where}: index.json is not an object")
    chosen = select_manifest(blobs, index, tag, platform, where)
    if chosen.get("mediaType", MT_OCI_MANIFEST) not in _MANIFEST_TYPES:
        raise ImageError(f"{where}: descriptor mediaType {chosen.get('mediaType')!r} unknown")
    _, manifest = _read_blob_json(blobs, chosen, f"{where}: manifest")
    config_descriptor = manifest.get("config") if isinstance(manifest, dict) else None
    if not isinstance(config_descriptor, dict):
        raise ImageError(f"{where}: manifest has no config descriptor")
    config_digest, config = _read_blob_json(blobs, config_descriptor, f"{where}: config")
    if not isinstance(config, dict):
        raise ImageError(f"{where}: config is not an object")
    _check_platform(config, platform, where)
    layers = _layers_from_manifest(manifest, config, where)
    return Image(reference, config_digest, config, layers, blobs)


def _check_platform(config: dict[str, Any], platform: Platform, where: str) -> None:
    """An index without platform fields still has the platform in the config."""
    found = (config.get("os"), config.get("architecture"))
    if None not in found and found != (platform.os, platform.architecture):
        raise ImageError(f"{where}: the image is for {found[0]}/{found[1]}, not {platform}",
                         "choose another with --platform OS/ARCH")


# --- legacy docker save ------------------------------------------------------------------


def _member_name(value: object, what: str) -> str:
    """A member name from docker-save's manifest.json: a plain relative name, nothing else."""
    if not isinstance(value, str) or not value:
        raise ImageError(f"{what}: {value!r} is not a member name")
    name = posixpath.normpath(value)
    if name.startswith(("/", "../")) or name == "..":
        raise ImageError(f"{what}: member name {value!r} leaves the archive")
    return name


def _open_docker_legacy(blobs: TarBlobs, reference: str, tag: str | None,
                        platform: Platform) -> Image:
    where = reference
    with blobs.open_member("manifest.json", "manifest.json") as raw:
        entries = _load_json(raw, f"{where}: manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ImageError(f"{where}: manifest.json lists no images")
    if tag is not None:
        entries = [e for e in entries if isinstance(e, dict) and any(
            t == tag or t.endswith((":" + tag, "/" + tag)) for t in e.get("RepoTags") or [])]
    if len(entries) != 1 or not isinstance(entries[0], dict):
        raise ImageError(f"{where}: manifest.json has {len(entries)} images for {tag or 'any tag'};"
                         " name one with docker-archive:PATH:NAME:TAG")
    entry = entries[0]
    config_name = _member_name(entry.get("Config"), f"{where}: manifest.json Config")
    with blobs.open_member(config_name, "config") as raw:
        data = read_capped(raw, METADATA_CAP, f"{where}: {config_name}")
    config_digest = Digest("sha256", _sha256(data))
    stem = posixpath.basename(config_name).removesuffix(".json")
    if len(stem) == 64 and stem != config_digest.encoded:
        raise DigestError(f"{where}: {config_name} hashes to {config_digest}, not its name")
    config = _parse_json(data, f"{where}: {config_name}")
    if not isinstance(config, dict):
        raise ImageError(f"{where}: {config_name} is not an object")
    _check_platform(config, platform, where)
    names = entry.get("Layers")
    if not isinstance(names, list):
        raise ImageError(f"{where}: manifest.json Layers is not a list")
    diff_ids = _diff_ids(config, len(names), where)
    layers = []
    for position, value in enumerate(names):
        member = _member_name(value, f"{where}: manifest.json Layers[{position}]")
        # No digest or size is recorded for a legacy layer: its diff_id checks it.
        layers.append(Layer(position, "application/vnd.docker.image.rootfs.diff.tar", None,
                            None, diff_ids[position], member, where))
    return Image(reference, config_digest, config, tuple(layers), blobs)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# --- references --------------------------------------------------------------------------


def _split_tag(text: str) -> tuple[str, str | None]:
    """``PATH[:TAG]``, where TAG may hold colons itself (``name:tag``): the shortest prefix
    that exists is the path; a path that exists as written wins over any split."""
    if os.path.exists(text) or ":" not in text:
        return text, None
    for position, char in enumerate(text):
        if char == ":" and os.path.exists(text[:position]):
            return text[:position], text[position + 1:] or None
    path, _, tag = text.rpartition(":")
    return path, tag


def open_image(reference: str, platform: Platform | None = None) -> Image:
    """Open IMAGE as the CLI names it: a path, or oci:/oci-archive:/docker-archive: PATH[:TAG]."""
    platform = platform or host_platform()
    kind, _, rest = reference.partition(":")
    if kind not in ("oci", "oci-archive", "docker-archive") or not rest:
        kind, rest = "auto", reference
    path_text, tag = _split_tag(rest)
    path = Path(path_text)
    if not path.exists():
        raise ImageError(f"{reference}: no such image file or directory {path}")
    blobs: Blobs = LayoutBlobs(path) if path.is_dir() else TarBlobs(path)
    try:
        if isinstance(blobs, LayoutBlobs):
            return _open_oci(blobs, reference, tag, platform)
        assert isinstance(blobs, TarBlobs)
        if "index.json" in blobs.members and kind != "docker-archive":
            return _open_oci(blobs, reference, tag, platform)
        if "manifest.json" in blobs.members and "index.json" not in blobs.members:
            return _open_docker_legacy(blobs, reference, tag, platform)
        if "index.json" in blobs.members:  # docker 25+ writes both; its index is the OCI one
            return _open_oci(blobs, reference, tag, platform)
        raise ImageError(f"{reference}: archive has neither index.json nor manifest.json")
    except BaseException:
        blobs.close()
        raise


# --- layer streams -----------------------------------------------------------------------


class _Prefixed:
    """Bytes already read (to look at the magic) followed by the rest of the stream."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                head, self._head = self._head, b""
                more = self._rest.read(size - len(head) if size >= 0 else -1)
                return head + more
            head, self._head = self._head[:size], self._head[size:]
            return head
        return self._rest.read(size)


class _Gunzip:
    """Streaming gzip, concatenated members included (RFC 1952 allows several).

    Reads may return fewer bytes than asked (never none before the end), which tarfile and
    the hashing readers accept; this avoids re-copying a large buffer on every small read.
    """

    def __init__(self, raw: Readable, what: str) -> None:
        self._raw = raw
        self._what = what
        self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)
        self._buffer = b""
        self._offset = 0

    def read(self, size: int = -1, /) -> bytes:
        while self._offset >= len(self._buffer):
            if not self._fill():
                return b""
        end = len(self._buffer) if size < 0 else self._offset + size
        out = self._buffer[self._offset:end]
        self._offset += len(out)
        return out

    def _fill(self) -> bool:
        chunk = self._inflate.unconsumed_tail or self._raw.read(1 << 18)
        if not chunk:
            if not self._inflate.eof:
                raise ImageError(f"{self._what}: gzip stream ends early (truncated layer)")
            return False
        try:
            self._buffer = self._inflate.decompress(chunk, 1 << 20)
            if self._inflate.eof and self._inflate.unused_data:
                rest = self._inflate.unused_data
                self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)
                self._buffer += self._inflate.decompress(rest, 1 << 20)
        except zlib.error as exc:
            raise ImageError(f"{self._what}: gzip stream is corrupt: {exc}") from exc
        self._offset = 0
        return True


class LayerStream:
    """One layer read once: compressed bytes hashed against the descriptor, then decompressed
    bytes hashed against the config's diff_id. Read :attr:`tar` to the end, then :meth:`finish`.
    """

    def __init__(self, image: Image, layer: Layer) -> None:
        self.layer = layer
        self._raw = image.blobs.open_member(layer.member, layer.what)
        self._outer: VerifyingReader | None = None
        source: Readable = self._raw
        if layer.digest is not None:
            self._outer = VerifyingReader(self._raw, layer.digest, layer.size, layer.what)
            source = self._outer
        head = source.read(4)
        self.compression = _compression(head, layer)
        self._inner = VerifyingReader(
            _decompress(self.compression, _Prefixed(head, source), layer.what), layer.diff_id,
            None,
            f"{layer.what} uncompressed (diff_id)",
        )
        self.tar: Readable = self._inner

    def finish(self) -> None:
        """Drain what the tar reader left (end-of-archive padding) and check every hash."""
        self._inner.drain()
        if self._outer is not None:
            self._outer.drain()
            self._outer.verify()
        self._inner.verify()

    def check_compressed(self) -> None:
        """After a failure: if the blob itself is wrong, raise that instead."""
        if self._outer is not None:
            self._outer.drain()
            self._outer.verify()

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> LayerStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def uncompressed_size(self) -> int:
        return self._inner.count


def _compression(head: bytes, layer: Layer) -> str:
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if layer.media_type.endswith(("+gzip", "+zstd", ".gzip")) and layer.digest is not None:
        log.debug("%s: mediaType %s but the content is not compressed", layer.what,
                  layer.media_type)
    return "none"


def _decompress(compression: str, raw: Readable, what: str) -> Readable:
    if compression == "gzip":
        return _Gunzip(raw, what)
    if compression == "zstd":
        try:
            import zstandard  # Debian python3-zstandard; only zstd layers need it
        except ImportError as exc:
            raise UnsupportedError(
                "a zstd-compressed layer needs python3-zstandard (apt-get install "
                "python3-zstandard)") from exc
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True)  # type: ignore[arg-type]  # any .read() will do
        return _Checked(reader, zstandard.ZstdError, f"{what}: zstd stream is corrupt")
    return raw


class _Checked:
    """Turns a decompressor's own exception into an ImageError naming the layer."""

    def __init__(self, raw: Readable, error: type[Exception], message: str) -> None:
        self._raw = raw
        self._error = error
        self._message = message

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._raw.read(size)
        except self._error as exc:
            raise ImageError(f"{self._message}: {exc}") from exc


def verify_layer(image: Image, layer: Layer) -> int:
    """Read a whole layer without writing anything; returns its uncompressed size."""
    with reporting("check"), LayerStream(image, layer) as stream:
        try:
            stream.finish()
        except ImageError:
            stream.check_compressed()  # a wrong blob explains a broken stream best
            raise
        return stream.uncompressed_size


def verify_image(image: Image) -> None:
    """Check every layer's digest, size and diff_id before anything is unpacked."""
    for layer in image.layers:
        log.info("verifying %s", layer.what)
        verify_layer(image, layer)
