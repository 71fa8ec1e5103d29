"""Registries on loopback for tests: Debian's docker-registry, and a small scripted one.

* :func:`run_registry` starts ``/usr/bin/docker-registry serve CONFIG`` on 127.0.0.1 and a
  free port, with its storage in a given directory, and ends it by its pid.
* :func:`build_layout` writes a small OCI image layout (gzip tar layers, configs,
  manifests, and an index when several platforms are asked for); :func:`skopeo_push`
  copies it into a registry with skopeo.
* :class:`ScriptedRegistry` is an http.server in a thread that serves a layout through the
  distribution API and misbehaves on purpose: it can demand a Bearer token or Basic
  credentials, cut a blob halfway, ignore Range, send wrong bytes, or redirect blobs.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REGISTRY_BINARY = "/usr/bin/docker-registry"
BUSYBOX = "/bin/busybox"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _registry_config(storage: Path, port: int) -> str:
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )


@dataclass(frozen=True)
class RunningRegistry:
    host: str  # 127.0.0.1:PORT
    pid: int


@contextmanager
def run_registry(workdir: Path, storage: Path | None = None) -> Iterator[RunningRegistry]:
    """Run docker-registry on loopback; stop it by its pid when the block ends.

    Its config and log go to *workdir*; its storage to *storage* (default: a new
    directory in *workdir*), which a later run may serve again.
    """
    if storage is None:
        storage = workdir / "registry-storage"
        storage.mkdir()
    for _ in range(3):  # the free port may be taken between probe and bind: try again
        port = free_port()
        config = workdir / "registry.yml"
        config.write_text(_registry_config(storage, port))
        with open(workdir / "registry.log", "wb") as log:
            process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL,
            )
        try:
            if _wait_until_up(process, f"http://127.0.0.1:{port}/v2/"):
                yield RunningRegistry(f"127.0.0.1:{port}", process.pid)
                return
        finally:
            if process.poll() is None:
                os.kill(process.pid, 15)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, 9)
                    process.wait()
    log_text = (workdir / "registry.log").read_text(errors="replace")
    raise RuntimeError(f"docker-registry did not start:\n{log_text}")


def _wait_until_up(process: subprocess.Popen[bytes], url: str) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    return False


# ----------------------------------------------------------------------------------------
# Building images


@dataclass(frozen=True)
class Image:
    architecture: str
    files: Mapping[str, bytes]  # path in the rootfs -> content
    with_busybox: bool = False


@dataclass
class Built:
    """Digests of what :func:`build_layout` wrote."""

    manifests: dict[str, str] = field(default_factory=dict)  # architecture -> digest
    layers: dict[str, str] = field(default_factory=dict)  # architecture -> layer digest
    index: str | None = None


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(image: Image) -> tuple[bytes, bytes]:
    """(gzip tar, plain tar) of the image's files."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = {"etc", "bin"}
        for name in sorted(directories):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        entries = dict(image.files)
        if image.with_busybox:
            entries["bin/busybox"] = Path(BUSYBOX).read_bytes()
        for name, content in sorted(entries.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(content), 0
            info.mode = 0o755 if name.startswith("bin/") else 0o644
            tar.addfile(info, io.BytesIO(content))
        if image.with_busybox:
            link = tarfile.TarInfo("bin/sh")
            link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "busybox", 0
            tar.addfile(link)
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), plain


def _put(layout: Path, data: bytes) -> str:
    digest = _sha256(data)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return digest


def build_layout(layout: Path, images: list[Image], tag: str = "latest") -> Built:
    """Write an OCI layout; with more than one image, ``tag`` names an index of them."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    built = Built()
    descriptors = []
    for image in images:
        compressed, plain = _layer(image)
        layer = _put(layout, compressed)
        config = json.dumps({
            "architecture": image.architecture, "os": "linux",
            "config": {"Cmd": ["/bin/sh"]} if image.with_busybox else {},
            "rootfs": {"type": "layers", "diff_ids": [_sha256(plain)]},
        }).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _put(layout, config),
                       "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": len(compressed)}],
        }).encode()
        digest = _put(layout, manifest)
        built.manifests[image.architecture] = digest
        built.layers[image.architecture] = layer
        descriptors.append({"mediaType": OCI_MANIFEST, "digest": digest,
                            "size": len(manifest),
                            "platform": {"os": "linux", "architecture": image.architecture}})
    if len(descriptors) > 1:
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                            "manifests": descriptors}).encode()
        built.index = _put(layout, index)
        top = {"mediaType": OCI_INDEX, "digest": built.index, "size": len(index)}
    else:
        top = dict(descriptors[0])
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}))
    return built


def skopeo(*args: str) -> str:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def skopeo_push(layout: Path, registry: str, repository: str, *, tag: str = "latest",
                all_images: bool = False, docker_format: bool = False) -> None:
    args = ["copy", "--quiet", "--dest-tls-verify=false"]
    if all_images:
        args.append("--all")
    if docker_format:
        args += ["--format", "v2s2"]
    skopeo(*args, f"oci:{layout}:{tag}", f"docker://{registry}/{repository}:{tag}")


# ----------------------------------------------------------------------------------------
# A scripted registry


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1; trust it with SSL_CERT_FILE=cert."""

    cert: Path
    key: Path


def make_certificate(directory: Path) -> TlsFiles:
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(files.key), "-out", str(files.cert)],
        check=True, capture_output=True, timeout=60,
    )
    return files


@dataclass
class Script:
    """How :class:`ScriptedRegistry` behaves; tests change it between pulls."""

    bearer: bool = False  # answer 401 with a Bearer challenge until a token is sent
    realm: str | None = None  # the challenge's realm (default: this server's /token)
    basic: tuple[str, str] | None = None  # demand these Basic credentials instead
    cut_blob: str | None = None  # this digest: send half, then close (cut_times times)
    cut_times: int = 1
    ignore_range: bool = False
    corrupt_blob: str | None = None  # this digest: same length, other bytes
    redirect_blobs_to: str | None = None  # "http://127.0.0.1:PORT" serving /storage/...
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # extra tags
    token: str = "secret-token-42"
    not_http: bool = False  # answer every request with a line that is not HTTP
    short_manifest: bool = False  # manifests: promise more bytes than are sent, then close


@dataclass
class Seen:
    """What :class:`ScriptedRegistry` was asked; tests assert on it."""

    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def paths(self, prefix: str = "") -> list[str]:
        return [path for path, _ in self.requests if path.startswith(prefix)]


class ScriptedRegistry:
    """Serve an OCI layout on 127.0.0.1 through the distribution API, per a :class:`Script`.

    Every repository name serves the same layout; tags are the layout's ref names.
    """

    def __init__(self, layout: Path, script: Script | None = None,
                 tls: TlsFiles | None = None) -> None:
        self.layout = layout
        self.script = script or Script()
        self.seen = Seen()
        self._lock = threading.Lock()
        self._cuts: dict[str, int] = {}
        handler = type("Handler", (_Handler,), {"registry": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = False
        self.server.block_on_close = True
        self.port = int(self.server.server_address[1])
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, name="scripted",
                                       kwargs={"poll_interval": 0.05})

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def __enter__(self) -> ScriptedRegistry:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def note(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.seen.requests.append((path, headers))

    def take_cut(self, digest: str) -> bool:
        """True if this request for *digest* should be cut off halfway."""
        with self._lock:
            if self.script.cut_blob != digest:
                return False
            done = self._cuts.get(digest, 0)
            if done >= self.script.cut_times:
                return False
            self._cuts[digest] = done + 1
            return True

    def tag(self, name: str) -> tuple[str, bytes] | None:
        if name in self.script.manifests:
            return self.script.manifests[name]
        index = json.loads((self.layout / "index.json").read_text())
        for entry in index["manifests"]:
            if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == name:
                return entry["mediaType"], self.blob(entry["digest"]) or b""
        return None

    def blob(self, digest: str) -> bytes | None:
        algorithm, _, encoded = digest.partition(":")
        if algorithm != "sha256" or len(encoded) != 64 or not encoded.isalnum():
            return None
        path = self.layout / "blobs" / "sha256" / encoded
        return path.read_bytes() if path.is_file() else None


class _Handler(BaseHTTPRequestHandler):
    registry: ScriptedRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        registry, script = self.registry, self.registry.script
        headers = {k.lower(): v for k, v in self.headers.items()}
        registry.note(self.path, headers)
        if script.not_http:
            self.wfile.write(b"HELLO THIS IS NOT HTTP\r\n\r\n")
            self.close_connection = True
            return None
        if self.path.startswith("/moved"):  # a realm that redirects elsewhere
            self.send_response(307)
            self.send_header("Location", "/token")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if self.path.startswith("/token"):
            return self._json(200, {"token": script.token, "expires_in": 300})
        if self.path.startswith("/storage/"):
            return self._blob(self.path.removeprefix("/storage/"), headers)
        if not self._authorised(headers):
            return None
        if self.path == "/v2/":
            return self._json(200, {})
        parts = self.path.split("/")
        if len(parts) >= 5 and parts[-2] == "manifests":
            return self._manifest(parts[-1])
        if len(parts) >= 5 and parts[-2] == "blobs":
            if script.redirect_blobs_to:
                self.send_response(307)
                self.send_header("Location", f"{script.redirect_blobs_to}/storage/{parts[-1]}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return self._blob(parts[-1], headers)
        return self._error(404, "NAME_UNKNOWN")

    def _authorised(self, headers: dict[str, str]) -> bool:
        script = self.registry.script
        if script.bearer and headers.get("authorization") != f"Bearer {script.token}":
            realm = script.realm or f"{self.registry.url}/token"
            challenge = (f'Bearer realm="{realm}",service="scripted",'
                         f'scope="repository:test/busybox:pull"')
            self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": challenge})
            return False
        if script.basic:
            wanted = base64.b64encode(":".join(script.basic).encode()).decode()
            if headers.get("authorization") != f"Basic {wanted}":
                self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": 'Basic realm="x"'})
                return False
        return True

    def _manifest(self, reference: str) -> None:
        found = self.registry.tag(reference)
        if found is None and reference.startswith("sha256:"):
            data = self.registry.blob(reference)
            if data is not None:
                found = json.loads(data).get("mediaType", OCI_MANIFEST), data
        if found is None:
            return self._error(404, "MANIFEST_UNKNOWN")
        media_type, data = found
        if self.registry.script.short_manifest:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data) + 100))
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True
            return None
        self._send(200, data, {"Content-Type": media_type})
        return None

    def _blob(self, digest: str, headers: dict[str, str]) -> None:
        registry, script = self.registry, self.registry.script
        data = registry.blob(digest)
        if data is None:
            return self._error(404, "BLOB_UNKNOWN")
        if script.corrupt_blob == digest:
            data = bytes(b ^ 0x55 for b in data)
        if registry.take_cut(digest):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        wanted = headers.get("range", "")
        if wanted.startswith("bytes=") and wanted.endswith("-") and not script.ignore_range:
            start = int(wanted[6:-1])
            extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            self._send(206, data[start:], extra)
            return None
        self._send(200, data, {})
        return None

    def _json(self, status: int, body: object) -> None:
        self._send(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, extra: Mapping[str, str] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
        self._send(status, body, {"Content-Type": "application/json", **(extra or {})})

    def _send(self, status: int, body: bytes, extra: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
