"""Pull an image from a registry (Distribution API v2) into a verified OCI image layout.

:func:`pull` asks the registry for a manifest, picks the one for the wanted platform when
the tag names an index (or a Docker manifest list), and downloads the config and layers
into ``<layout>/blobs/<algorithm>/<hex>``. Every blob is hashed and counted while it
streams into a temporary file next to its final place, and renamed into place only when
digest and size match its descriptor. ``index.json`` is written last, so a layout that has
one is complete.

What the registry sends is untrusted input:

* a digest is checked against the image-spec grammar (``sha256:`` and 64 lowercase hex
  digits, ``sha512:`` and 128) before it becomes part of a path (CVE-2024-3727 was a
  digest used as a path without this check);
* manifests, indexes and configs are read into memory, so they are capped at 4 MiB;
* a blob that grows past its descriptor's size is cut off and refused;
* plain http is allowed only to loopback addresses; a redirect may not go from https to
  http, and a Bearer token realm may not either; credentials and tokens are sent only to
  the registry itself and to the realm it names, never to a host a blob redirect points at.

Specifications: the OCI distribution-spec (the HTTP API), the OCI image-spec
(descriptor.md, image-layout.md, image-index.md) and Docker's "Image Manifest V 2,
Schema 2" and token authentication documents (the Bearer flow).

Stdlib only; modules that cost start-up time (http.client, ssl, hashlib) are imported in
the functions that use them, because the command line imports this module.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from minirun.errors import ConfigError, MiniRunError, UnsupportedError

from .digest import ENCODED

if TYPE_CHECKING:
    import http.client

log = logging.getLogger(__name__)

# Called per blob as it downloads: (digest, bytes done, total bytes).
ProgressCallback = Callable[[str, int, int], None]

# Manifest media types, in the order they go into the Accept header.
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
REF_NAME = "org.opencontainers.image.ref.name"
# A Docker schema 2 manifest is stored as its OCI twin (the blobs' bytes are the same),
# because OCI layout readers (skopeo's among them) look only for OCI media types.
DOCKER_TO_OCI = {
    "application/vnd.docker.container.image.v1+json": "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.image.rootfs.diff.tar.gzip":
        "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}

MAX_DOCUMENT = 4 * 1024 * 1024  # manifests, indexes and configs are read into memory
CHUNK = 256 * 1024
TIMEOUT = 60.0  # seconds without progress on a socket
BLOB_ATTEMPTS = 3  # a cut connection is resumed (Range) this many times within one pull
MAX_REDIRECTS = 5

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

# image-spec descriptor.md: the encoded part per registered algorithm.
_DIGEST = ENCODED  # the image-spec digest grammar, shared with the layout reader
# distribution-spec: repository path components and tags.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\]")


class RegistryError(MiniRunError):
    """A registry answered with an error, or sent something that fails verification."""


# ----------------------------------------------------------------------------------------
# References


@dataclass(frozen=True)
class Reference:
    """``[registry[:port]/]repository[:tag][@digest]`` split into its parts."""

    registry: str  # host[:port] as written, "docker.io" by default
    repository: str  # "library/busybox" for Docker Hub's official images
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """The host[:port] that serves the API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def manifest_ref(self) -> str:
        """What goes after /manifests/: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.repository}:{self.tag}" if self.tag else self.repository
        return f"{text}@{self.digest}" if self.digest else text


def parse_reference(text: str) -> Reference:
    """Split an image reference the way Docker does.

    The first path component is a registry only if it has a dot or a colon, or is
    ``localhost``; otherwise the registry is Docker Hub, where a one-component name
    means an official image under ``library/``. Without tag or digest the tag is
    ``latest``.
    """

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"image reference {text!r}", "", problem)

    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        problem = _digest_problem(digest)
        if problem:
            raise bad(problem)
    registry = DOCKER_HUB
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, rest = first, remainder
        _check_registry(registry, bad)
    tag = None
    name, colon, maybe_tag = rest.rpartition(":")
    if colon and "/" not in maybe_tag:
        rest, tag = name, maybe_tag
        if not _TAG.fullmatch(tag):
            raise bad(f"tag {tag!r} is not valid (letters, digits, _ . -; at most 128)")
    if registry in (DOCKER_HUB, "index.docker.io"):
        registry = DOCKER_HUB
        if rest and "/" not in rest:
            rest = f"library/{rest}"
    if not rest:
        raise bad("no repository name")
    for component in rest.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise bad(
                f"repository component {component!r} is not valid "
                "(lowercase letters and digits, joined by . _ __ or -)"
            )
    if len(rest) > 255:
        raise bad("repository name is longer than 255 characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, rest, tag, digest)


def _check_registry(registry: str, bad: Callable[[str], ConfigError]) -> None:
    host, port = split_host_port(registry)
    if not _HOST.fullmatch(host):
        raise bad(f"registry host {host!r} is not a valid host name or address")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise bad(f"registry port {port!r} is not a number from 1 to 65535")


def split_host_port(hostport: str) -> tuple[str, str | None]:
    """``host:5000`` -> (host, "5000"); ``[::1]:5000`` -> ("[::1]", "5000")."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end == -1:
            return hostport, None
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        return host, rest[1:] if rest.startswith(":") else None
    host, colon, port = hostport.partition(":")
    return host, port if colon else None


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (brackets allowed)."""
    import ipaddress

    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_digest(digest: object, where: str) -> str:
    """Return *digest* if it matches the image-spec grammar of a known algorithm.

    Only after this check may a digest become a path (``blobs/<algorithm>/<hex>``).
    """
    if not isinstance(digest, str):
        raise RegistryError(f"{where}: digest is not a string")
    problem = _digest_problem(digest)
    if problem:
        raise RegistryError(f"{where}: {problem}")
    return digest


def _digest_problem(digest: str) -> str | None:
    algorithm, colon, encoded = digest.partition(":")
    pattern = _DIGEST.get(algorithm)
    if not colon or pattern is None:
        return (f"digest {digest[:80]!r} uses an unsupported algorithm "
                "(supported: sha256, sha512)")
    if not pattern.fullmatch(encoded):
        length = 64 if algorithm == "sha256" else 128
        return f"digest {digest[:80]!r} is not {algorithm}: and {length} lowercase hex"
    return None


# ----------------------------------------------------------------------------------------
# Descriptors and platforms


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    def matches(self, other: Platform) -> bool:
        """True if *other* (from an index) serves what *self* (wanted) asks for."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        # Not yet: without a wanted variant the first entry of the os/architecture wins
        # (linux/arm could pick v6 over v7); remove this note when entries are ranked.
        if self.variant is None:
            return True
        return _variant(self.architecture, self.variant) == _variant(
            other.architecture, other.variant
        )


def _variant(architecture: str, variant: str | None) -> str | None:
    # arm64 has one variant in practice; indexes often leave it out.
    if architecture == "arm64" and variant is None:
        return "v8"
    return variant


def parse_platform(text: str) -> Platform:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError("platform", "", f"{text!r} is not os/architecture[/variant]")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type, "digest": self.digest, "size": self.size,
        }
        if self.platform is not None:
            out["platform"] = {"os": self.platform.os,
                               "architecture": self.platform.architecture}
            if self.platform.variant:
                out["platform"]["variant"] = self.platform.variant
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


def parse_descriptor(value: object, where: str) -> Descriptor:
    """Validate one descriptor from a manifest or index; *where* names its JSON path."""
    if not isinstance(value, dict):
        raise RegistryError(f"{where}: not an object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str):
        raise RegistryError(f"{where}.mediaType: missing or not a string")
    digest = check_digest(value.get("digest"), f"{where}.digest")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{where}.size: missing or not a non-negative integer")
    platform = None
    raw_platform = value.get("platform")
    if isinstance(raw_platform, dict):
        os_name, arch = raw_platform.get("os"), raw_platform.get("architecture")
        variant = raw_platform.get("variant")
        if isinstance(os_name, str) and isinstance(arch, str):
            platform = Platform(os_name, arch, variant if isinstance(variant, str) else None)
    return Descriptor(media_type, digest, size, platform)


# ----------------------------------------------------------------------------------------
# HTTP


@dataclass(frozen=True)
class Url:
    scheme: str  # "http" or "https"
    hostport: str
    path: str  # with query

    @property
    def host(self) -> str:
        return split_host_port(self.hostport)[0]

    @property
    def origin(self) -> tuple[str, str]:
        return self.scheme, self.hostport.lower()

    def __str__(self) -> str:
        return f"{self.scheme}://{self.hostport}{self.path}"


def parse_url(text: str, where: str) -> Url:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise RegistryError(f"{where}: {text[:200]!r} is not an http(s) URL")
    path = parts.path or "/"
    return Url(parts.scheme, parts.netloc, f"{path}?{parts.query}" if parts.query else path)


def check_scheme_change(old: Url, new: Url, where: str) -> None:
    """Refuse https -> http, and plain http to anything but a loopback host."""
    if old.scheme == "https" and new.scheme == "http":
        raise RegistryError(f"{where}: refusing to go from https to http ({new})")
    if new.scheme == "http" and not is_loopback(new.host):
        raise RegistryError(f"{where}: refusing plain http to a non-loopback host ({new})")


def _open(
    url: Url, headers: Mapping[str, str], method: str = "GET"
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """One request on a new connection; the caller closes the connection.

    Not yet: connections are not reused (one TCP and TLS handshake per request); remove
    this note when a session keeps one connection per origin. TLS trusts the system store
    (or SSL_CERT_FILE); not yet: a per-registry CA file option.
    """
    import http.client

    conn: http.client.HTTPConnection
    if url.scheme == "https":
        import ssl

        conn = http.client.HTTPSConnection(
            url.hostport, timeout=TIMEOUT, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(url.hostport, timeout=TIMEOUT)
    try:
        conn.request(method, url.path, headers={"User-Agent": "minirun", **headers})
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def _read_capped(response: http.client.HTTPResponse, limit: int, what: str) -> bytes:
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RegistryError(f"{what}: {length} bytes is more than the {limit} allowed")
    try:
        data = response.read(limit + 1)
    except _network_errors() as exc:
        raise RegistryError(f"{what}: reading the answer: {_describe_oserror(exc)}") from exc
    if len(data) > limit:
        raise RegistryError(f"{what}: more than the {limit} bytes allowed")
    # http.client returns a short body without complaint when the peer closes early.
    if length is not None and length.isdigit() and len(data) != int(length):
        raise RegistryError(f"{what}: the answer ended after {len(data)} of {length} bytes")
    return data


def _error_codes(body: bytes) -> str:
    """The ``errors[].code`` list of a registry error body, or "" if it has none."""
    try:
        errors = json.loads(body).get("errors", [])
        codes = [str(e["code"]) for e in errors if isinstance(e, dict) and "code" in e]
    except (ValueError, AttributeError, TypeError):
        return ""
    return ",".join(codes)


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        key.lower(): value
        for key, value in re.findall(r'([A-Za-z_]+)\s*=\s*"([^"]*)"', rest)
    }
    for key, value in re.findall(r'([A-Za-z_]+)\s*=\s*([^",\s]+)', rest):
        params.setdefault(key.lower(), value)
    return scheme.lower(), params


# ----------------------------------------------------------------------------------------
# Credentials


def load_credentials(registry: str, auth_file: Path | None = None) -> tuple[str, str] | None:
    """User and password for *registry* from a Docker-style ``config.json`` ``auths`` map.

    The default file is ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``. Only
    the base64 ``auth`` field (or ``username``/``password``) is read.
    Not yet: credential helpers (``credsStore``, ``credHelpers``); remove this note when
    :func:`load_credentials` runs them.
    """
    import base64
    import binascii

    if auth_file is None:
        base = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
        auth_file = Path(base) / "config.json"
    try:
        document = json.loads(auth_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(str(auth_file), "", f"cannot read credentials: {exc}") from exc
    auths = document.get("auths") if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        return None
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io", DOCKER_HUB_API]
    for key in keys:
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, colon, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ConfigError(str(auth_file), f"auths.{key}.auth", "not base64 of "
                                  "user:password") from exc
            if colon:
                return user, password
        name, secret = entry.get("username"), entry.get("password")
        if isinstance(name, str) and isinstance(secret, str):
            return name, secret
    return None


# ----------------------------------------------------------------------------------------
# The session: one registry, one repository, its auth state


class _Session:
    """Requests to one repository of one registry, with the authentication they need."""

    def __init__(self, ref: Reference, insecure_http: bool,
                 credentials: tuple[str, str] | None) -> None:
        self.ref = ref
        self.name = ref.registry
        self.scheme = "http" if insecure_http else "https"
        self.credentials = credentials
        self.authorization: str | None = None

    def fail(self, what: str, problem: str, hint: str | None = None) -> RegistryError:
        return RegistryError(f"registry {self.name}: {what}: {problem}", hint)

    def url(self, path: str) -> Url:
        return Url(self.scheme, self.ref.api_host, path)

    def get(self, path: str, what: str, headers: Mapping[str, str] | None = None,
            follow: bool = False) -> tuple[http.client.HTTPConnection,
                                           http.client.HTTPResponse]:
        """GET *path* on the registry, authenticating once on 401.

        With *follow*, redirects are followed (blob storage); the answer may then come from
        another host, which never sees our Authorization header.
        """
        conn, response = self._request(self.url(path), what, headers or {}, follow)
        if response.status != 401:
            return conn, response
        challenge = response.getheader("WWW-Authenticate") or ""
        conn.close()
        self._authenticate(challenge, what)
        conn, response = self._request(self.url(path), what, headers or {}, follow)
        return conn, response

    def _request(self, url: Url, what: str, headers: Mapping[str, str], follow: bool
                 ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        start = url
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            # Credentials go to the registry's own origin only, never to blob storage.
            if self.authorization and url.origin == start.origin:
                sent["Authorization"] = self.authorization
            log.debug("GET %s", url)
            try:
                conn, response = _open(url, sent)
            except _network_errors() as exc:
                raise self.fail(what, f"GET {url}: {_describe_oserror(exc)}") from exc
            if not follow or response.status not in (301, 302, 303, 307, 308):
                return conn, response
            location = response.getheader("Location") or ""
            conn.close()
            from urllib.parse import urljoin

            target = parse_url(urljoin(str(url), location), f"registry {self.name}: {what}: "
                               "redirect")
            check_scheme_change(url, target, f"registry {self.name}: {what}: redirect")
            url = target
        raise self.fail(what, f"more than {MAX_REDIRECTS} redirects")

    def _authenticate(self, challenge: str, what: str) -> None:
        import base64

        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if self.credentials is None:
                raise self.fail(what, "401 UNAUTHORIZED (the registry wants a user and "
                                "password)", hint="give credentials or add them to "
                                "~/.docker/config.json")
            user, password = self.credentials
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.authorization = f"Basic {token}"
        elif scheme == "bearer":
            self.authorization = f"Bearer {self._fetch_token(params, what)}"
        else:
            raise self.fail(what, f"401 UNAUTHORIZED with an unknown challenge "
                            f"{challenge[:100]!r}")

    def _fetch_token(self, params: Mapping[str, str], what: str) -> str:
        """The Bearer flow: GET the realm the registry named, with service and scope."""
        import base64
        from urllib.parse import urlencode

        where = f"registry {self.name}: {what}: token realm"
        realm = parse_url(params.get("realm", ""), where)
        check_scheme_change(self.url("/"), realm, where)
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        sep = "&" if "?" in realm.path else "?"
        url = Url(realm.scheme, realm.hostport, f"{realm.path}{sep}{urlencode(query)}")
        headers = {}
        if self.credentials is not None:
            user, password = self.credentials
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        log.debug("token from %s", url)
        try:
            # No redirects: the token request goes to the realm the registry named, only.
            conn, response = _open(url, headers)
        except _network_errors() as exc:
            raise RegistryError(f"{where}: GET {url}: {_describe_oserror(exc)}") from exc
        try:
            body = _read_capped(response, 1024 * 1024, where)
        finally:
            conn.close()
        if response.status != 200:
            raise RegistryError(f"{where}: GET {url.scheme}://{url.hostport}"
                                f"{realm.path}: {response.status} {_error_codes(body)}".rstrip())
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{where}: the answer has no token or access_token")
        return token

    def check_status(self, response: http.client.HTTPResponse, body: bytes, what: str,
                     expected: tuple[int, ...] = (200,)) -> None:
        if response.status in expected:
            return
        codes = _error_codes(body) or response.reason
        hint = None
        if response.status in (401, 403):
            hint = "the registry refused access: check the repository name and credentials"
        raise self.fail(what, f"{response.status} {codes}", hint)


def _network_errors() -> tuple[type[Exception], ...]:
    """What a request or a read can raise: socket errors and malformed HTTP."""
    import http.client

    return OSError, http.client.HTTPException


def _describe_oserror(exc: Exception) -> str:
    import errno
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):  # its errno is an OpenSSL code, not an errno value
        return f"TLS error: {exc.reason or exc}"
    code = getattr(exc, "errno", None) or 0
    name = errno.errorcode.get(code)
    if name:
        return f"{os.strerror(code).lower()} ({name})"
    text = str(exc).strip()[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------------
# The layout


class _Layout:
    def __init__(self, root: Path) -> None:
        self.root = root

    def blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = check_digest(digest, "blob").partition(":")
        return self.root / "blobs" / algorithm / encoded

    def partial_path(self, digest: str) -> Path:
        path = self.blob_path(digest)
        return path.with_name(f".{path.name}.partial")

    def prepare(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        _write_atomic(self.root / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')

    def has_blob(self, descriptor: Descriptor) -> bool:
        """True if the blob is present and correct; a wrong one is removed."""
        path = self.blob_path(descriptor.digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        if size == descriptor.size and _hash_file(path, descriptor.digest) == descriptor.digest:
            return True
        log.warning("blob %s in %s is damaged; downloading it again", descriptor.digest,
                    self.root)
        path.unlink()
        return False

    def put_bytes(self, digest: str, data: bytes) -> None:
        if _hash_bytes(data, digest) != digest:
            raise RegistryError(f"blob {digest}: digest mismatch (got "
                                f"{_hash_bytes(data, digest)})")
        path = self.blob_path(digest)
        path.parent.mkdir(exist_ok=True)
        if not path.is_file() or path.read_bytes() != data:
            _write_atomic(path, data)

    def add_to_index(self, descriptor: Descriptor) -> None:
        """Add *descriptor* to index.json, replacing an entry with the same ref name."""
        import fcntl

        # Two pulls into one layout must not lose each other's entry: the read-modify-
        # write of index.json holds an flock(2) on the layout directory itself.
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._add_to_index_locked(descriptor)
        finally:
            os.close(fd)

    def _add_to_index_locked(self, descriptor: Descriptor) -> None:
        index_path = self.root / "index.json"
        manifests: list[Any] = []
        if index_path.exists():
            try:
                old = json.loads(index_path.read_text())
                manifests = [m for m in old.get("manifests", []) if isinstance(m, dict)]
            except (OSError, ValueError, AttributeError) as exc:
                raise ConfigError(str(index_path), "", f"cannot read the existing index: "
                                  f"{exc}") from exc
        name = descriptor.annotations.get(REF_NAME)
        manifests = [m for m in manifests if (m.get("annotations") or {}).get(REF_NAME) != name]
        manifests.append(descriptor.to_json())
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        _write_atomic(index_path, json.dumps(index, indent=2).encode() + b"\n")


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


def _new_hash(digest: str) -> Any:
    import hashlib

    return hashlib.new(digest.partition(":")[0])


def _hash_bytes(data: bytes, digest: str) -> str:
    hasher = _new_hash(digest)
    hasher.update(data)
    return f"{digest.partition(':')[0]}:{hasher.hexdigest()}"


def _hash_file(path: Path, digest: str) -> str:
    hasher = _new_hash(digest)
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            hasher.update(chunk)
    return f"{digest.partition(':')[0]}:{hasher.hexdigest()}"


# ----------------------------------------------------------------------------------------
# Blobs


class _Interrupted(Exception):
    """The body ended (or the connection broke) before the blob was complete."""


def _fetch_blob(session: _Session, layout: _Layout, descriptor: Descriptor,
                progress: ProgressCallback | None) -> None:
    """Download one blob into place, verified; resume a partial download with Range."""
    digest, size = descriptor.digest, descriptor.size
    if layout.has_blob(descriptor):
        log.debug("blob %s is already present", digest)
        if progress:
            progress(digest, size, size)
        return
    partial = layout.partial_path(digest)
    partial.parent.mkdir(exist_ok=True)  # blobs/sha512 is made only when needed
    got = ""
    for attempt in range(1, BLOB_ATTEMPTS + 1):
        try:
            got = _download_into(session, partial, descriptor, progress)
            break
        except RegistryError:
            if partial.stat().st_size == 0:
                partial.unlink()  # nothing worth resuming from
            raise
        except _Interrupted as exc:
            log.info("blob %s: %s (attempt %d of %d)", digest, exc, attempt, BLOB_ATTEMPTS)
            if attempt == BLOB_ATTEMPTS:
                raise RegistryError(
                    f"blob {digest}: {exc} after {BLOB_ATTEMPTS} attempts",
                    hint="run the pull again: it resumes from the partial download",
                ) from None
    if got != digest:
        partial.unlink()
        raise RegistryError(f"blob {digest}: digest mismatch (got {got})")
    os.replace(partial, layout.blob_path(digest))


def _download_into(session: _Session, partial: Path, descriptor: Descriptor,
                   progress: ProgressCallback | None) -> str:
    """One GET of the blob into *partial*, from where an earlier attempt stopped.

    Returns the digest of what *partial* holds when complete. The hash is computed while
    the body streams in; on a resume its state is first rebuilt from the bytes already
    in *partial* (hash objects cannot be saved between runs).
    """
    digest, size = descriptor.digest, descriptor.size
    what = f"blob {digest}"
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(partial, flags, 0o644)
    with open(fd, "r+b") as out:
        have = os.fstat(out.fileno()).st_size
        if have > size:
            have = 0
        if have == size and size > 0:
            return _hash_file(partial, digest)  # complete already; the caller checks it
        headers = {"Range": f"bytes={have}-"} if have else {}
        conn, response = session.get(
            f"/v2/{session.ref.repository}/blobs/{digest}", what, headers, follow=True
        )
        try:
            start = _resume_offset(session, response, have, what)
            if start < 0:
                out.truncate(0)
                raise _Interrupted(f"the server refused to resume at {have}; starting again")
            out.truncate(start)
            hasher = _new_hash(digest)
            out.seek(0)
            while start and (chunk := out.read(min(CHUNK, start - out.tell()))):
                hasher.update(chunk)
            out.seek(start)
            _stream(response, out, hasher, start, size, what, digest, progress)
        finally:
            conn.close()
    return f"{digest.partition(':')[0]}:{hasher.hexdigest()}"


def _resume_offset(session: _Session, response: http.client.HTTPResponse, have: int,
                   what: str) -> int:
    """Where the body starts: *have* if the server honoured Range, 0 if it sent the whole
    blob, -1 if it answered with another range or refused Range (start again from 0)."""
    if response.status == 200:
        if have:
            log.info("%s: the server ignored Range; downloading it whole", what)
        return 0
    if response.status == 206:
        match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)",
                             response.getheader("Content-Range") or "")
        if match and int(match.group(1)) == have:
            return have
        return -1
    if response.status == 416:
        return -1
    body = _read_capped(response, 64 * 1024, what)
    session.check_status(response, body, what)
    raise session.fail(what, f"unexpected status {response.status}")


def _stream(response: http.client.HTTPResponse, out: IO[bytes], hasher: Any, start: int,
            size: int, what: str, digest: str, progress: ProgressCallback | None) -> None:
    import http.client

    done = start
    if progress:
        progress(digest, done, size)
    while True:
        try:
            chunk = response.read(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            out.flush()
            raise _Interrupted(f"download broke off at {done} of {size} bytes "
                               f"({type(exc).__name__})") from exc
        if not chunk:
            break
        done += len(chunk)
        if done > size:
            out.truncate(0)
            raise RegistryError(f"{what}: larger than the {size} bytes of its descriptor")
        out.write(chunk)  # a local error (ENOSPC) is no reason to retry: it propagates
        hasher.update(chunk)
        if progress:
            progress(digest, done, size)
    out.flush()
    os.fsync(out.fileno())
    if done < size:
        raise _Interrupted(f"download broke off at {done} of {size} bytes")


# ----------------------------------------------------------------------------------------
# Manifests


@dataclass(frozen=True)
class _Document:
    media_type: str
    digest: str
    data: bytes
    body: Mapping[str, Any]


def _fetch_manifest(session: _Session, reference: str, expect: Descriptor | None,
                    what: str) -> _Document:
    """GET a manifest or index by tag or digest, verify it, and parse it."""
    accept = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
    conn, response = session.get(
        f"/v2/{session.ref.repository}/manifests/{reference}", what, {"Accept": accept}
    )
    try:
        data = _read_capped(response, MAX_DOCUMENT, f"registry {session.name}: {what}")
    finally:
        conn.close()
    session.check_status(response, data, what)
    pinned = expect.digest if expect else None
    if reference == session.ref.digest:
        pinned = reference
    digest = _hash_bytes(data, pinned or "sha256:")
    if pinned and digest != pinned:
        raise session.fail(what, f"digest mismatch (got {digest})")
    if expect and len(data) != expect.size:
        raise session.fail(what, f"size {len(data)} is not the {expect.size} of its descriptor")
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise session.fail(what, f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise session.fail(what, "not a JSON object")
    content_type = (response.getheader("Content-Type") or "").split(";")[0].strip()
    media_type = body.get("mediaType") or content_type
    if media_type in DOCKER_SCHEMA1 or body.get("schemaVersion") == 1:
        raise session.fail(what, "Docker schema 1 manifests are not supported",
                           hint="the image is from before 2017; push it again with a "
                           "current tool (schema 2 or OCI)")
    if media_type not in INDEX_TYPES + MANIFEST_TYPES:
        # An OCI manifest may leave mediaType out; layers tell it apart from an index.
        media_type = OCI_INDEX if "manifests" in body else OCI_MANIFEST
    if body.get("schemaVersion") != 2:
        raise session.fail(what, "schemaVersion is not 2")
    return _Document(media_type, digest, data, body)


def _select_platform(session: _Session, index: _Document, wanted: Platform,
                     what: str) -> Descriptor:
    entries = index.body.get("manifests")
    if not isinstance(entries, list):
        raise session.fail(what, "manifests: missing or not a list")
    descriptors = [parse_descriptor(entry, f"registry {session.name}: {what}: manifests[{i}]")
                   for i, entry in enumerate(entries)]
    for descriptor in descriptors:
        if descriptor.platform and wanted.matches(descriptor.platform):
            if descriptor.media_type not in MANIFEST_TYPES:
                raise session.fail(what, f"the {wanted} entry has media type "
                                   f"{descriptor.media_type!r}, not an image manifest")
            return descriptor
    available = sorted({str(d.platform) for d in descriptors
                        if d.platform and d.platform.os != "unknown"})
    raise session.fail(what, f"no image for platform {wanted} "
                       f"(available: {', '.join(available) or 'none'})")


def _manifest_blobs(session: _Session, manifest: _Document, what: str) -> list[Descriptor]:
    """Config first, then layers, validated."""
    where = f"registry {session.name}: {what}"
    config = parse_descriptor(manifest.body.get("config"), f"{where}: config")
    if config.size > MAX_DOCUMENT:
        raise session.fail(what, f"config is {config.size} bytes, more than the "
                           f"{MAX_DOCUMENT} allowed")
    layers = manifest.body.get("layers")
    if not isinstance(layers, list):
        raise session.fail(what, "layers: missing or not a list")
    return [config] + [parse_descriptor(layer, f"{where}: layers[{i}]")
                       for i, layer in enumerate(layers)]


# ----------------------------------------------------------------------------------------
# The entry point


def pull(
    reference: str,
    layout_dir: Path,
    *,
    platform: str = "linux/amd64",
    insecure_http: bool = False,
    progress: ProgressCallback | None = None,
    credentials: tuple[str, str] | None = None,
    auth_file: Path | None = None,
    ref_name: str | None = None,
) -> str:
    """Pull *reference* into the OCI image layout *layout_dir*; return the manifest digest.

    The digest returned is that of the manifest in the layout: the registry's, except for a
    Docker schema 2 manifest, which is stored converted to an OCI manifest (same config
    and layer blobs, OCI media types), so the layout holds OCI media types only.

    *layout_dir* is created if needed and may already hold other images: blobs that are
    present and correct are not downloaded again, and ``index.json`` keeps entries with
    other ref names. The new entry points at the platform's image manifest (never at an
    index) and is annotated with ``org.opencontainers.image.ref.name`` = *ref_name*
    (default: the tag, or the digest for a reference pinned by digest only).

    *insecure_http* uses plain http, allowed only for loopback registries.
    *credentials* (user, password) are used on a Basic challenge and sent to a Bearer
    realm; without them they are looked up in *auth_file* (a Docker ``config.json``).
    """
    ref = parse_reference(reference)
    wanted = parse_platform(platform)
    host = split_host_port(ref.api_host)[0]
    if insecure_http and not is_loopback(host):
        raise UnsupportedError(
            f"registry {ref.registry}: plain http is allowed only for loopback registries "
            "(127.0.0.0/8, ::1, localhost)", hint="use https (leave out insecure_http)")
    if credentials is None:
        credentials = load_credentials(ref.registry, auth_file)
    session = _Session(ref, insecure_http, credentials)
    name = ref_name or ref.tag or ref.digest or "latest"
    try:
        return _pull(session, _Layout(layout_dir), wanted, name, progress)
    except OSError as exc:
        # Network errors were turned into RegistryError where they happened: this one is
        # about the layout's own files (ENOSPC, EACCES, ELOOP from O_NOFOLLOW, ...).
        raise MiniRunError(f"layout {layout_dir}: {exc.filename or ''}: "
                           f"{_describe_oserror(exc)}") from exc


def _pull(session: _Session, layout: _Layout, wanted: Platform, name: str,
          progress: ProgressCallback | None) -> str:
    """The steps of :func:`pull`, in order."""
    ref = session.ref
    layout.prepare()
    log.info("pulling %s from %s", ref, ref.registry)

    # GET /v2/ first: it tells whether this is a registry at all, and lets a registry
    # that wants authentication say so once, before the real requests.
    _check_api(session)

    what = f"manifest {ref.repository}:{ref.tag}" if ref.tag else f"manifest {ref}"
    top, manifest = _resolve(session, wanted, what)

    # Not yet: layers download one after another, not in parallel; and a layer's "urls"
    # (foreign or non-distributable layers) are ignored: it is fetched from the registry.
    # Remove this note when either changes.
    for descriptor in _manifest_blobs(session, manifest, what):
        _fetch_blob(session, layout, descriptor, progress)

    stored = _to_oci(session, manifest, what) if manifest.media_type == DOCKER_MANIFEST \
        else manifest

    # Manifest (and index) blobs after their contents, index.json last: a layout whose
    # index.json names an image has every blob of it. The registry's own documents are
    # kept too, so every digest they name resolves in the layout.
    for document in (stored, manifest, top):
        layout.put_bytes(document.digest, document.data)
    platform_seen = _config_platform(layout, stored) or wanted
    layout.add_to_index(Descriptor(stored.media_type, stored.digest, len(stored.data),
                                   platform_seen, {REF_NAME: name}))
    log.info("pulled %s as %s (%s)", ref, name, stored.digest)
    return stored.digest


def _resolve(session: _Session, wanted: Platform, what: str) -> tuple[_Document, _Document]:
    """(what the reference names, the image manifest for *wanted*): one document twice
    unless the reference names an index or manifest list."""
    ref = session.ref
    top = _fetch_manifest(session, ref.manifest_ref, None, what)
    if top.media_type not in INDEX_TYPES:
        return top, top
    chosen = _select_platform(session, top, wanted, what)
    manifest = _fetch_manifest(session, chosen.digest, chosen,
                               f"manifest {ref.repository}@{chosen.digest}")
    if manifest.media_type not in MANIFEST_TYPES:
        raise session.fail(what, f"the {wanted} entry is not an image manifest")
    return top, manifest


def _to_oci(session: _Session, manifest: _Document, what: str) -> _Document:
    """The OCI manifest for the same config and layers as a Docker schema 2 manifest."""
    body = json.loads(manifest.data)

    def convert(descriptor: dict[str, Any], where: str) -> None:
        media_type = descriptor.get("mediaType")
        if media_type not in DOCKER_TO_OCI:
            raise session.fail(what, f"{where}: media type {media_type!r} has no OCI "
                               "equivalent")
        descriptor["mediaType"] = DOCKER_TO_OCI[media_type]

    convert(body["config"], "config")
    for i, layer in enumerate(body["layers"]):
        convert(layer, f"layers[{i}]")
    body["mediaType"] = OCI_MANIFEST
    data = json.dumps(body, separators=(",", ":")).encode()
    log.info("stored the Docker manifest %s as the OCI manifest %s", manifest.digest,
             _hash_bytes(data, "sha256:"))
    return _Document(OCI_MANIFEST, _hash_bytes(data, "sha256:"), data, body)


def _check_api(session: _Session) -> None:
    conn, response = session.get("/v2/", "API check")
    try:
        body = _read_capped(response, 64 * 1024, f"registry {session.name}: API check")
    finally:
        conn.close()
    if response.status == 404:
        raise session.fail("GET /v2/", "404: not a registry (no Distribution API v2)")
    session.check_status(response, body, "GET /v2/")


def _config_platform(layout: _Layout, manifest: _Document) -> Platform | None:
    """The platform the image's config declares (it may disagree with the wanted one)."""
    config = manifest.body.get("config")
    if not isinstance(config, dict):
        return None
    try:
        body = json.loads(layout.blob_path(str(config.get("digest"))).read_bytes())
        os_name, arch = body.get("os"), body.get("architecture")
        variant = body.get("variant")
    except (OSError, ValueError, AttributeError, MiniRunError):
        return None
    if isinstance(os_name, str) and isinstance(arch, str):
        return Platform(os_name, arch, variant if isinstance(variant, str) else None)
    return None


# ----------------------------------------------------------------------------------------
# Progress printing


class ProgressPrinter:
    """The default progress callback: rich bars on a terminal, plain lines otherwise.

    Use as a context manager so the bars are closed: ``with ProgressPrinter() as p:
    pull(..., progress=p)``. rich is imported only when stderr is a terminal.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.fancy = self.stream.isatty()
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}
        self._reported: set[str] = set()

    def __enter__(self) -> ProgressPrinter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __call__(self, digest: str, done: int, total: int) -> None:
        if self.fancy:
            self._bar(digest, done, total)
        else:
            self._line(digest, done, total)

    def _line(self, digest: str, done: int, total: int) -> None:
        short = digest[:19]
        if digest not in self._reported:
            self._reported.add(digest)
            state = "present" if done == total and total else "downloading"
            if done and done < total:
                state = f"resuming at {_human(done)}"
            print(f"blob {short}: {state}, {_human(total)}", file=self.stream)
            if state == "present":
                return
        if done == total:
            print(f"blob {short}: done", file=self.stream)

    def _bar(self, digest: str, done: int, total: int) -> None:
        if self._rich is None:
            from rich.console import Console
            from rich.progress import DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self._rich = Progress(TextColumn("{task.description}"),
                                  *Progress.get_default_columns()[1:3], DownloadColumn(),
                                  TransferSpeedColumn(),
                                  console=Console(file=self.stream))
            self._rich.start()
        if digest not in self._tasks:
            self._tasks[digest] = self._rich.add_task(digest[:19], total=total)
        self._rich.update(self._tasks[digest], completed=done)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


def _human(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def iter_blob_paths(layout_dir: Path) -> Iterator[Path]:
    """Every finished blob file of a layout (not the partial downloads)."""
    for algorithm in _DIGEST:
        directory = layout_dir / "blobs" / algorithm
        if directory.is_dir():
            yield from (p for p in directory.iterdir() if not p.name.startswith("."))
