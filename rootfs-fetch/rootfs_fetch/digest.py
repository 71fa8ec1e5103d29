"""Digests: their grammar is checked before one becomes a path, content is checked as it streams.

A digest string from an index, manifest or docker-save file is untrusted input: containers/image
once built file paths from unchecked digests (CVE-2024-3727). Only the two registered algorithms
of image-spec descriptor.md are accepted, with their exact encoded form (lowercase hex of the
right length); anything else is refused by name before it is used anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from minirun.errors import EXIT_USAGE, MiniRunError

# Algorithm -> encoded form, from image-spec descriptor.md ("Registered algorithms").
ENCODED = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}


_LENGTH = {"sha256": 64, "sha512": 128}


class DigestError(MiniRunError):
    """A digest is malformed, or content does not match its digest or size."""

    exit_code = EXIT_USAGE  # a bad input file, like a bad config.json


@dataclass(frozen=True)
class Digest:
    algorithm: str
    encoded: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    @property
    def short(self) -> str:
        return self.encoded[:12]

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def parse_digest(value: object, where: str) -> Digest:
    """Check ``value`` against the digest grammar; ``where`` names the field for the error."""
    if not isinstance(value, str):
        raise DigestError(f"{where}: digest must be a string, not {type(value).__name__}")
    algorithm, sep, encoded = value.partition(":")
    pattern = ENCODED.get(algorithm)
    if not sep or pattern is None:
        raise DigestError(
            f"{where}: digest {value[:80]!r} uses an unsupported algorithm "
            f"(only {', '.join(ENCODED)} are accepted)"
        )
    if not pattern.fullmatch(encoded):
        raise DigestError(
            f"{where}: digest {value[:80]!r} is malformed "
            f"({algorithm} needs {_LENGTH[algorithm]} lowercase hex digits)"
        )
    return Digest(algorithm, encoded)


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Progress:
    """Where layer reads are reported: ``callback(label, bytes so far, size)`` for every read
    of a blob whose size is known; the label says the phase ("check", "unpack") and the
    digest. None (the default) costs nothing."""

    callback: Callable[[str, int, int], None] | None = None
    phase = "read"


@contextlib.contextmanager
def reporting(phase: str) -> Iterator[None]:
    """Name the phase the reads inside the block belong to."""
    previous, Progress.phase = Progress.phase, phase
    try:
        yield
    finally:
        Progress.phase = previous


class VerifyingReader:
    """Reads from ``raw``, hashing and counting; :meth:`verify` compares with what was promised.

    ``size`` None means the size is not known in advance (an uncompressed layer checked against
    its diff_id). Reading more than ``size`` bytes fails at once, so an endless blob is cut off.
    """

    def __init__(self, raw: Readable, digest: Digest, size: int | None, what: str) -> None:
        self._raw = raw
        self._digest = digest
        self._hash = digest.hasher()
        self._size = size
        self._what = what
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self.count += len(data)
        if self._size is not None and self.count > self._size:
            raise DigestError(
                f"{self._what}: more than the {self._size} bytes its descriptor says"
            )
        self._hash.update(data)
        if Progress.callback is not None and self._size:
            Progress.callback(f"{Progress.phase} {self._digest.short}", self.count,
                              self._size)
        return data

    def drain(self, chunk: int = 1 << 20) -> None:
        while self.read(chunk):
            pass

    def verify(self) -> None:
        """Call after the last byte was read (see :meth:`drain`)."""
        if self._size is not None and self.count != self._size:
            raise DigestError(
                f"{self._what}: {self.count} bytes, but its descriptor says {self._size}"
            )
        actual = self._hash.hexdigest()
        if actual != self._digest.encoded:
            raise DigestError(
                f"{self._what}: content hashes to {self._digest.algorithm}:{actual}, "
                f"not {self._digest}"
            )


def read_capped(stream: IO[bytes] | Readable, cap: int, what: str) -> bytes:
    """Read a whole metadata stream, refusing more than ``cap`` bytes (index, manifest, config)."""
    data = stream.read(cap + 1)
    if len(data) > cap:
        raise DigestError(f"{what}: larger than {cap} bytes; refusing to read it as metadata")
    return data
