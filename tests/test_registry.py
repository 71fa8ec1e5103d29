"""rootfs_fetch.registry against real registries on loopback.

Debian's docker-registry serves images that skopeo pushed; a scripted registry (an
http.server thread, tests/registry_fixture.py) plays the parts docker-registry cannot
without certificates or on purpose: Bearer and Basic authentication, a connection cut
halfway, Range ignored, wrong bytes, redirects to storage, schema 1 and oversized
manifests. Layouts that pull writes are checked with skopeo and umoci.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_REPO = Path(__file__).resolve().parent.parent
for _entry in (str(_REPO), str(_REPO / "rootfs-fetch")):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

from registry_fixture import (  # noqa: E402
    OCI_MANIFEST,
    Built,
    Image,
    Script,
    ScriptedRegistry,
    TlsFiles,
    build_layout,
    free_port,
    make_certificate,
    run_registry,
    skopeo,
    skopeo_push,
)

from minirun.errors import ConfigError, MiniRunError, UnsupportedError  # noqa: E402
from rootfs_fetch import registry  # noqa: E402
from rootfs_fetch.registry import (  # noqa: E402
    ProgressPrinter,
    Reference,
    RegistryError,
    parse_reference,
    pull,
)


@dataclass(frozen=True)
class Images:
    """What the module pushed into the registry storage."""

    storage: Path
    busybox: Built
    multi: Built
    docker: Built


@dataclass(frozen=True)
class Pushed:
    host: str
    images: Images

    @property
    def busybox(self) -> Built:
        return self.images.busybox

    @property
    def multi(self) -> Built:
        return self.images.multi

    @property
    def docker(self) -> Built:
        return self.images.docker


@pytest.fixture(scope="module")
def module_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="minirun-registry-test-"))
    yield path
    shutil.rmtree(path)
    assert not path.exists()


@pytest.fixture(scope="module")
def images(module_dir: Path) -> Images:
    """Registry storage holding three repositories, pushed by skopeo once per module."""
    busybox = build_layout(module_dir / "busybox", [
        Image("amd64", {"etc/hello": b"hello from the registry\n"}, with_busybox=True),
    ])
    multi = build_layout(module_dir / "multi", [
        Image("amd64", {"etc/arch": b"amd64\n"}), Image("arm64", {"etc/arch": b"arm64\n"}),
    ])
    docker = build_layout(module_dir / "docker", [Image("amd64", {"etc/kind": b"v2s2\n"})])
    with run_registry(module_dir) as running:
        skopeo_push(module_dir / "busybox", running.host, "test/busybox")
        skopeo_push(module_dir / "multi", running.host, "test/multi", all_images=True)
        skopeo_push(module_dir / "docker", running.host, "test/docker", docker_format=True)
        skopeo_push(module_dir / "multi", running.host, "test/dockerlist", all_images=True,
                    docker_format=True)
    _assert_gone(running.pid)
    return Images(module_dir / "registry-storage", busybox, multi, docker)


@pytest.fixture()
def pushed(images: Images) -> Iterator[Pushed]:
    """docker-registry on loopback serving the module's storage, for one test.

    One process per test (it starts in well under a second) keeps every test free of
    leftover processes, which the suite checks after each test.
    """
    workdir = Path(tempfile.mkdtemp(prefix="minirun-registry-run-"))
    try:
        with run_registry(workdir, images.storage) as running:
            yield Pushed(running.host, images)
        _assert_gone(running.pid)
    finally:
        shutil.rmtree(workdir)


def _assert_gone(pid: int) -> None:
    """The registry was waited for: its pid names no process, or a new unrelated one."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return
    assert b"docker-registry" not in command


@pytest.fixture(scope="module")
def small_layout(module_dir: Path) -> Path:
    """A layout the scripted registry serves: one small image tagged latest."""
    layout = module_dir / "small"
    build_layout(layout, [Image("amd64", {"etc/small": b"x" * 100_000})])
    return layout


@pytest.fixture()
def out() -> Iterator[Path]:
    """A fresh directory for a pulled layout, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="minirun-pull-"))
    yield path / "layout"
    shutil.rmtree(path)


@pytest.fixture(autouse=True)
def no_threads_left() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before


def _layer_of(layout: Path) -> str:
    return str(_manifest_of(layout)["layers"][0]["digest"])


def _manifest_of(layout: Path) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    manifest: dict[str, Any] = json.loads(
        _blob(layout, index["manifests"][0]["digest"]).read_text())
    return manifest


def _manifest_digest(layout: Path) -> str:
    return str(json.loads((layout / "index.json").read_text())["manifests"][0]["digest"])


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]


def _files_in_blobs(layout: Path) -> list[str]:
    return sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())


# ----------------------------------------------------------------------------------------
# References


@pytest.mark.parametrize(("text", "expected"), [
    ("busybox", Reference("docker.io", "library/busybox", "latest", None)),
    ("busybox:1.36", Reference("docker.io", "library/busybox", "1.36", None)),
    ("docker.io/busybox", Reference("docker.io", "library/busybox", "latest", None)),
    ("index.docker.io/library/busybox", Reference("docker.io", "library/busybox", "latest",
                                                  None)),
    ("someone/tool:v1", Reference("docker.io", "someone/tool", "v1", None)),
    ("127.0.0.1:5000/test/busybox", Reference("127.0.0.1:5000", "test/busybox", "latest",
                                              None)),
    ("localhost/a", Reference("localhost", "a", "latest", None)),
    ("[::1]:5000/a/b:t", Reference("[::1]:5000", "a/b", "t", None)),
    ("quay.io/org/app@sha256:" + "a" * 64,
     Reference("quay.io", "org/app", None, "sha256:" + "a" * 64)),
    ("r.example:443/x:tag@sha256:" + "b" * 64,
     Reference("r.example:443", "x", "tag", "sha256:" + "b" * 64)),
])
def test_parse_reference(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_docker_hub_api_host() -> None:
    assert parse_reference("busybox").api_host == "registry-1.docker.io"
    assert parse_reference("127.0.0.1:5000/x").api_host == "127.0.0.1:5000"


@pytest.mark.parametrize(("text", "problem"), [
    ("Busybox", "repository component 'Busybox' is not valid"),
    ("busybox:", "tag '' is not valid"),
    ("busybox:bad tag", "tag 'bad tag' is not valid"),
    ("busybox@sha256:abc", "is not sha256: and 64 lowercase hex"),
    ("busybox@sha256:" + "A" * 64, "is not sha256: and 64 lowercase hex"),
    ("busybox@md5:" + "a" * 32, "unsupported algorithm"),
    ("busybox@sha256:../../etc/passwd", "is not sha256: and 64 lowercase hex"),
    ("r.example:99999/x", "registry port '99999'"),
    ("r.example/", "no repository name"),
    ("a//b", "repository component '' is not valid"),
    ("a" * 40 + "!.example/x", "is not a valid host name"),
])
def test_parse_reference_rejects(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_reference(text)
    assert str(caught.value).startswith(f"image reference {text!r}: ")
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("[::1]", True), ("localhost", True),
    ("10.0.0.1", False), ("example.com", False), ("128.0.0.1", False), ("::2", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert registry.is_loopback(host) is loopback


def test_insecure_http_only_for_loopback(out: Path) -> None:
    with pytest.raises(UnsupportedError, match="plain http is allowed only for loopback"):
        pull("registry.example.com/x/y", out, insecure_http=True)
    assert not out.exists()  # refused before anything was written or sent


def test_https_to_http_is_refused() -> None:
    https = registry.parse_url("https://127.0.0.1/x", "test")
    with pytest.raises(RegistryError, match="refusing to go from https to http"):
        registry.check_scheme_change(https, registry.parse_url("http://127.0.0.1/y", "t"),
                                     "realm")
    http = registry.parse_url("http://127.0.0.1/x", "test")
    registry.check_scheme_change(http, registry.parse_url("http://localhost:1/y", "t"), "r")
    registry.check_scheme_change(http, registry.parse_url("https://auth.example/t", "t"),
                                 "r")
    with pytest.raises(RegistryError, match="plain http to a non-loopback host"):
        registry.check_scheme_change(http, registry.parse_url("http://192.0.2.1/", "t"), "r")


# ----------------------------------------------------------------------------------------
# Against docker-registry


def test_pull_single_image(pushed: Pushed, out: Path) -> None:
    lines = io.StringIO()
    with ProgressPrinter(lines) as printer:
        digest = pull(f"{pushed.host}/test/busybox", out, insecure_http=True,
                      progress=printer)
    assert digest == pushed.busybox.manifests["amd64"]
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["annotations"] == {
        "org.opencontainers.image.ref.name": "latest"}
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    layer = pushed.busybox.layers["amd64"]
    assert f"blob {layer[:19]}: downloading" in lines.getvalue()
    assert f"blob {layer[:19]}: done" in lines.getvalue()
    # No partial downloads are left next to the blobs.
    assert not [name for name in _files_in_blobs(out) if name.startswith(".")]

    # skopeo reads the layout and agrees on the digest and the layer.
    seen = json.loads(skopeo("inspect", f"oci:{out}:latest"))
    assert seen["Digest"] == digest
    assert seen["Layers"] == [layer]

    # umoci unpacks it (it verifies every blob) and the files are there.
    bundle = out.parent / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{out}:latest", str(bundle)],
                   check=True, capture_output=True, timeout=120)
    assert (bundle / "rootfs/etc/hello").read_bytes() == b"hello from the registry\n"
    assert os.readlink(bundle / "rootfs/bin/sh") == "busybox"
    assert (bundle / "rootfs/bin/busybox").stat().st_size > 100_000


def test_rootfs_fetch_reader_accepts_the_pulled_layout(pushed: Pushed, out: Path) -> None:
    """The layout reader of rootfs_fetch (source.py) opens and verifies what pull wrote."""
    from rootfs_fetch import source

    pull(f"{pushed.host}/test/multi", out, platform="linux/arm64", insecure_http=True)
    with source.open_image(f"oci:{out}:latest", source.parse_platform("linux/arm64")) as image:
        source.verify_image(image)
        assert image.config["architecture"] == "arm64"
        assert [str(layer.digest) for layer in image.layers] == [pushed.multi.layers["arm64"]]


def test_second_pull_downloads_nothing(pushed: Pushed, out: Path) -> None:
    pull(f"{pushed.host}/test/busybox:latest", out, insecure_http=True)
    before = {name: (out / "blobs/sha256" / name).stat().st_ino for name in _files_in_blobs(out)}
    calls: list[tuple[str, int, int]] = []
    pull(f"{pushed.host}/test/busybox:latest", out, insecure_http=True,
         progress=lambda d, done, total: calls.append((d, done, total)))
    after = {name: (out / "blobs/sha256" / name).stat().st_ino for name in _files_in_blobs(out)}
    assert after == before  # not one blob file was replaced
    assert calls and all(done == total for _, done, total in calls)


def test_damaged_blob_is_downloaded_again(pushed: Pushed, out: Path) -> None:
    pull(f"{pushed.host}/test/busybox", out, insecure_http=True)
    layer = _blob(out, pushed.busybox.layers["amd64"])
    good = layer.read_bytes()
    layer.write_bytes(b"\0" * len(good))
    pull(f"{pushed.host}/test/busybox", out, insecure_http=True)
    assert layer.read_bytes() == good


def test_pull_by_digest(pushed: Pushed, out: Path) -> None:
    wanted = pushed.busybox.manifests["amd64"]
    assert pull(f"{pushed.host}/test/busybox@{wanted}", out, insecure_http=True) == wanted
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == wanted


def test_manifest_unknown(pushed: Pushed, out: Path) -> None:
    with pytest.raises(RegistryError) as caught:
        pull(f"{pushed.host}/test/nope", out, insecure_http=True)
    assert str(caught.value) == (
        f"registry {pushed.host}: manifest test/nope:latest: 404 MANIFEST_UNKNOWN")
    assert not (out / "index.json").exists()


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_multi_platform_selects_the_platform(pushed: Pushed, out: Path, arch: str) -> None:
    digest = pull(f"{pushed.host}/test/multi", out, platform=f"linux/{arch}",
                  insecure_http=True)
    assert digest == pushed.multi.manifests[arch]
    assert pushed.multi.index and _blob(out, pushed.multi.index).exists()
    entry = json.loads((out / "index.json").read_text())["manifests"][0]
    assert entry["digest"] == digest
    assert entry["platform"] == {"os": "linux", "architecture": arch}
    other = "arm64" if arch == "amd64" else "amd64"
    assert not _blob(out, pushed.multi.layers[other]).exists()
    assert json.loads(skopeo("inspect", f"oci:{out}:latest"))["Architecture"] == arch


def test_arm64_variant_v8_matches_an_entry_without_variant(pushed: Pushed, out: Path) -> None:
    digest = pull(f"{pushed.host}/test/multi", out, platform="linux/arm64/v8",
                  insecure_http=True)
    assert digest == pushed.multi.manifests["arm64"]


def test_unknown_platform_lists_the_available_ones(pushed: Pushed, out: Path) -> None:
    with pytest.raises(RegistryError) as caught:
        pull(f"{pushed.host}/test/multi", out, platform="linux/s390x", insecure_http=True)
    assert str(caught.value) == (
        f"registry {pushed.host}: manifest test/multi:latest: no image for platform "
        "linux/s390x (available: linux/amd64, linux/arm64)")


def test_docker_schema2_is_stored_as_oci(pushed: Pushed, out: Path) -> None:
    digest = pull(f"{pushed.host}/test/docker", out, insecure_http=True)
    raw = json.loads(skopeo("inspect", "--tls-verify=false", "--raw",
                            f"docker://{pushed.host}/test/docker:latest"))
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    manifest = _manifest_of(out)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert manifest["layers"][0]["digest"] == raw["layers"][0]["digest"]
    assert manifest["config"]["digest"] == raw["config"]["digest"]
    assert json.loads(skopeo("inspect", f"oci:{out}:latest"))["Digest"] == digest


def test_docker_manifest_list_selects_and_converts(pushed: Pushed, out: Path) -> None:
    raw_list = skopeo("inspect", "--tls-verify=false", "--raw",
                      f"docker://{pushed.host}/test/dockerlist:latest")
    listed = json.loads(raw_list)
    assert listed["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    arm64 = next(m for m in listed["manifests"] if m["platform"]["architecture"] == "arm64")

    digest = pull(f"{pushed.host}/test/dockerlist", out, platform="linux/arm64",
                  insecure_http=True)
    assert digest != arm64["digest"]  # the stored manifest is the OCI conversion
    assert _manifest_of(out)["layers"][0]["digest"] == pushed.multi.layers["arm64"]
    # The registry's own list and manifest are kept, so their digests resolve.
    assert _blob(out, arm64["digest"]).stat().st_size == arm64["size"]
    assert _blob(out, "sha256:" + hashlib.sha256(raw_list.encode()).hexdigest()).exists()
    seen = json.loads(skopeo("inspect", f"oci:{out}:latest"))
    assert (seen["Digest"], seen["Architecture"]) == (digest, "arm64")


def test_pulls_into_one_layout_keep_each_other(pushed: Pushed, out: Path) -> None:
    pull(f"{pushed.host}/test/busybox", out, insecure_http=True, ref_name="busybox")
    pull(f"{pushed.host}/test/multi", out, insecure_http=True, ref_name="multi")
    again = pull(f"{pushed.host}/test/multi", out, platform="linux/arm64", insecure_http=True,
                 ref_name="multi")
    entries = json.loads((out / "index.json").read_text())["manifests"]
    names = {e["annotations"]["org.opencontainers.image.ref.name"]: e["digest"]
             for e in entries}
    assert names == {"busybox": pushed.busybox.manifests["amd64"], "multi": again}
    assert json.loads(skopeo("inspect", f"oci:{out}:busybox"))["Architecture"] == "amd64"
    assert json.loads(skopeo("inspect", f"oci:{out}:multi"))["Architecture"] == "arm64"


def test_partial_file_planted_as_a_symlink_is_not_followed(pushed: Pushed, out: Path) -> None:
    layer = pushed.busybox.layers["amd64"]
    (out / "blobs" / "sha256").mkdir(parents=True)
    target = out.parent / "elsewhere"
    partial = out / "blobs" / "sha256" / f".{layer.split(':')[1]}.partial"
    partial.symlink_to(target)
    with pytest.raises(MiniRunError) as caught:
        pull(f"{pushed.host}/test/busybox", out, insecure_http=True)
    assert str(caught.value) == (
        f"layout {out}: {partial}: too many levels of symbolic links (ELOOP)")
    assert not target.exists()


def test_connection_refused_is_one_line(out: Path) -> None:
    port = free_port()
    with pytest.raises(RegistryError) as caught:
        pull(f"127.0.0.1:{port}/a/b", out, insecure_http=True)
    assert str(caught.value) == (
        f"registry 127.0.0.1:{port}: API check: GET http://127.0.0.1:{port}/v2/: "
        "connection refused (ECONNREFUSED)")


def test_an_answer_that_is_not_http_is_one_line(small_layout: Path, out: Path) -> None:
    with ScriptedRegistry(small_layout, Script(not_http=True)) as server, \
            pytest.raises(RegistryError) as caught:
        pull(f"{server.host}/test/busybox", out, insecure_http=True)
    assert str(caught.value) == (
        f"registry {server.host}: API check: GET http://{server.host}/v2/: "
        "BadStatusLine: HELLO THIS IS NOT HTTP")


def test_a_manifest_cut_short_is_one_line(small_layout: Path, out: Path) -> None:
    with ScriptedRegistry(small_layout, Script(short_manifest=True)) as server, \
            pytest.raises(RegistryError) as caught:
        pull(f"{server.host}/test/busybox", out, insecure_http=True)
    size = len(_blob(small_layout, _manifest_digest(small_layout)).read_bytes())
    assert str(caught.value) == (
        f"registry {server.host}: manifest test/busybox:latest: the answer ended after "
        f"{size} of {size + 100} bytes")


# ----------------------------------------------------------------------------------------
# Authentication (scripted registry)


def test_bearer_token_flow(small_layout: Path, out: Path) -> None:
    with ScriptedRegistry(small_layout, Script(bearer=True)) as server:
        pull(f"{server.host}/test/busybox", out, insecure_http=True,
             credentials=("alice", "wonderland"))
    tokens = server.seen.paths("/token")
    assert len(tokens) == 1  # fetched once, used for every later request
    assert "service=scripted" in tokens[0]
    assert "scope=repository%3Atest%2Fbusybox%3Apull" in tokens[0]
    token_headers = next(h for p, h in server.seen.requests if p.startswith("/token"))
    assert token_headers["authorization"] == "Basic " + base64.b64encode(
        b"alice:wonderland").decode()
    for path, headers in server.seen.requests:
        if "/manifests/" in path or "/blobs/" in path:
            assert headers.get("authorization") == "Bearer secret-token-42", path


def test_bearer_realm_on_another_plain_http_host_is_refused(small_layout: Path,
                                                            out: Path) -> None:
    script = Script(bearer=True, realm="http://192.0.2.1/token")
    with ScriptedRegistry(small_layout, script) as server, \
            pytest.raises(RegistryError) as caught:
        pull(f"{server.host}/test/busybox", out, insecure_http=True)
    assert "token realm: refusing plain http to a non-loopback host" in str(caught.value)


def test_token_realm_redirect_is_not_followed(small_layout: Path, out: Path) -> None:
    with ScriptedRegistry(small_layout, Script(bearer=True)) as server:
        server.script.realm = f"http://{server.host}/moved"
        with pytest.raises(RegistryError) as caught:
            pull(f"{server.host}/test/busybox", out, insecure_http=True)
    assert str(caught.value) == (
        f"registry {server.host}: API check: token realm: GET http://{server.host}/moved: 307")
    assert server.seen.paths("/token") == []


def test_basic_auth_from_a_docker_config_file(small_layout: Path, out: Path) -> None:
    config = out.parent / "config.json"
    with ScriptedRegistry(small_layout, Script(basic=("bob", "s3cret"))) as server:
        auth = base64.b64encode(b"bob:s3cret").decode()
        config.write_text(json.dumps({"auths": {server.host: {"auth": auth}}}))
        with pytest.raises(RegistryError, match="401 UNAUTHORIZED"):
            pull(f"{server.host}/test/busybox", out, insecure_http=True,
                 auth_file=out.parent / "missing.json")
        pull(f"{server.host}/test/busybox", out, insecure_http=True, auth_file=config)
    assert (out / "index.json").exists()


def test_docker_hub_credentials_keys() -> None:
    config = Path(tempfile.mkdtemp()) / "config.json"
    try:
        auth = base64.b64encode(b"hub:pw").decode()
        config.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": auth}}}))
        assert registry.load_credentials("docker.io", config) == ("hub", "pw")
        assert registry.load_credentials("quay.io", config) is None
    finally:
        shutil.rmtree(config.parent)


# ----------------------------------------------------------------------------------------
# HTTPS (scripted registry with a self-signed certificate for 127.0.0.1)


@pytest.fixture(scope="module")
def tls(module_dir: Path) -> TlsFiles:
    return make_certificate(module_dir)


@pytest.fixture()
def trusted(tls: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> TlsFiles:
    """Trust the test certificate the way OpenSSL reads it (ssl.create_default_context)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.cert))
    return tls


def test_https_pull_with_a_bearer_token(small_layout: Path, out: Path,
                                        trusted: TlsFiles) -> None:
    with ScriptedRegistry(small_layout, Script(bearer=True), tls=trusted) as server:
        digest = pull(f"{server.host}/test/busybox", out)
    assert digest == _manifest_digest(small_layout)
    assert len(server.seen.paths("/token")) == 1


def test_https_untrusted_certificate(small_layout: Path, out: Path, tls: TlsFiles,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent")
    with ScriptedRegistry(small_layout, tls=tls) as server, \
            pytest.raises(RegistryError) as caught:
        pull(f"{server.host}/test/busybox", out)
    assert str(caught.value) == (
        f"registry {server.host}: API check: GET https://{server.host}/v2/: "
        "TLS certificate not trusted: self-signed certificate")


def test_https_registry_naming_an_http_realm_is_refused(small_layout: Path, out: Path,
                                                        trusted: TlsFiles) -> None:
    with ScriptedRegistry(small_layout) as plain:
        script = Script(bearer=True, realm=f"http://{plain.host}/token")
        with ScriptedRegistry(small_layout, script, tls=trusted) as server, \
                pytest.raises(RegistryError) as caught:
            pull(f"{server.host}/test/busybox", out)
    assert str(caught.value) == (
        f"registry {server.host}: API check: token realm: refusing to go from https to "
        f"http (http://{plain.host}/token)")
    assert plain.seen.requests == []


def test_https_blob_redirect_to_http_is_refused(small_layout: Path, out: Path,
                                                trusted: TlsFiles) -> None:
    with ScriptedRegistry(small_layout) as plain:
        script = Script(redirect_blobs_to=plain.url)
        with ScriptedRegistry(small_layout, script, tls=trusted) as server, \
                pytest.raises(RegistryError) as caught:
            pull(f"{server.host}/test/busybox", out)
    assert "redirect: refusing to go from https to http" in str(caught.value)
    assert plain.seen.requests == []
    assert not (out / "index.json").exists()


# ----------------------------------------------------------------------------------------
# Blobs (scripted registry)


def test_cut_download_resumes_with_range(small_layout: Path, out: Path) -> None:
    layer = _layer_of(small_layout)
    size = _blob(small_layout, layer).stat().st_size
    with ScriptedRegistry(small_layout, Script(cut_blob=layer)) as server:
        pull(f"{server.host}/test/busybox", out, insecure_http=True)
    asks = [h for p, h in server.seen.requests if p.endswith(f"/blobs/{layer}")]
    assert len(asks) == 2
    assert "range" not in asks[0]
    assert asks[1]["range"] == f"bytes={size // 2}-"
    assert _blob(out, layer).read_bytes() == _blob(small_layout, layer).read_bytes()


def test_range_ignored_falls_back_to_a_full_download(small_layout: Path, out: Path) -> None:
    layer = _layer_of(small_layout)
    script = Script(cut_blob=layer, ignore_range=True)
    with ScriptedRegistry(small_layout, script) as server:
        pull(f"{server.host}/test/busybox", out, insecure_http=True)
    asks = [h for p, h in server.seen.requests if p.endswith(f"/blobs/{layer}")]
    assert len(asks) == 2 and "range" in asks[1]
    assert _blob(out, layer).read_bytes() == _blob(small_layout, layer).read_bytes()


def test_interrupted_pull_resumes_on_the_next_pull(small_layout: Path, out: Path) -> None:
    layer = _layer_of(small_layout)
    size = _blob(small_layout, layer).stat().st_size
    script = Script(cut_blob=layer, cut_times=registry.BLOB_ATTEMPTS)
    partial = out / "blobs" / "sha256" / f".{layer.split(':')[1]}.partial"
    with ScriptedRegistry(small_layout, script) as server:
        with pytest.raises(RegistryError) as caught:
            pull(f"{server.host}/test/busybox", out, insecure_http=True)
        assert str(caught.value) == (
            f"blob {layer}: download broke off at {size // 2} of {size} bytes "
            f"after {registry.BLOB_ATTEMPTS} attempts")
        assert partial.stat().st_size == size // 2
        assert not _blob(out, layer).exists()
        assert not (out / "index.json").exists()
        server.seen.requests.clear()
        pull(f"{server.host}/test/busybox", out, insecure_http=True)
    asks = [h for p, h in server.seen.requests if p.endswith(f"/blobs/{layer}")]
    assert [h.get("range") for h in asks] == [f"bytes={size // 2}-"]
    assert not partial.exists()
    assert _blob(out, layer).read_bytes() == _blob(small_layout, layer).read_bytes()


def test_wrong_content_is_refused_and_removed(small_layout: Path, out: Path) -> None:
    layer = _layer_of(small_layout)
    with ScriptedRegistry(small_layout, Script(corrupt_blob=layer)) as server, \
            pytest.raises(RegistryError) as caught:
        pull(f"{server.host}/test/busybox", out, insecure_http=True)
    message = str(caught.value)
    assert message.startswith(f"blob {layer}: digest mismatch (got sha256:")
    assert message.endswith(")") and layer not in message[len(f"blob {layer}"):]
    assert layer.split(":")[1] not in " ".join(_files_in_blobs(out))
    assert not [name for name in _files_in_blobs(out) if name.startswith(".")]
    assert not (out / "index.json").exists()


def test_blob_redirect_gets_no_credentials(small_layout: Path, out: Path) -> None:
    with ScriptedRegistry(small_layout) as storage:
        script = Script(bearer=True, redirect_blobs_to=f"http://localhost:{storage.port}")
        with ScriptedRegistry(small_layout, script) as server:
            pull(f"{server.host}/test/busybox", out, insecure_http=True)
    fetched = storage.seen.requests
    assert len(fetched) == 2  # config and layer
    assert all(path.startswith("/storage/sha256:") for path, _ in fetched)
    assert all("authorization" not in headers for _, headers in fetched)
    assert json.loads(skopeo("inspect", f"oci:{out}:latest"))["Digest"]


# ----------------------------------------------------------------------------------------
# Manifests the client refuses (scripted registry)


def _serve_manifest(small_layout: Path, out: Path, media_type: str, data: bytes) -> str:
    script = Script(manifests={"odd": (media_type, data)})
    with ScriptedRegistry(small_layout, script) as server, \
            pytest.raises(RegistryError) as caught:
        pull(f"{server.host}/test/busybox:odd", out, insecure_http=True)
    prefix = f"registry {server.host}: manifest test/busybox:odd: "
    message = str(caught.value)
    assert message.startswith(prefix)
    return message.removeprefix(prefix)


def test_schema1_is_refused(small_layout: Path, out: Path) -> None:
    body = json.dumps({"schemaVersion": 1, "name": "test/busybox", "fsLayers": []}).encode()
    problem = _serve_manifest(
        small_layout, out, "application/vnd.docker.distribution.manifest.v1+prettyjws", body)
    assert problem == "Docker schema 1 manifests are not supported"


def test_oversized_manifest_is_refused(small_layout: Path, out: Path) -> None:
    body = b"{" + b" " * registry.MAX_DOCUMENT + b"}"
    problem = _serve_manifest(small_layout, out, OCI_MANIFEST, body)
    assert problem == f"{len(body)} bytes is more than the {registry.MAX_DOCUMENT} allowed"


@pytest.mark.parametrize("digest", [
    "sha256:../../../../../../tmp/minirun-victim/layer",
    "sha256:" + "A" * 64,
    "sha1:" + "a" * 40,
])
def test_bad_layer_digest_never_becomes_a_path(small_layout: Path, out: Path,
                                               digest: str) -> None:
    manifest = _manifest_of(small_layout)
    manifest["layers"][0]["digest"] = digest
    problem = _serve_manifest(small_layout, out, OCI_MANIFEST, json.dumps(manifest).encode())
    assert problem.startswith("layers[0].digest: digest ")
    assert _files_in_blobs(out) == []


def test_oversized_config_is_refused_before_download(small_layout: Path, out: Path) -> None:
    manifest = _manifest_of(small_layout)
    manifest["config"]["size"] = registry.MAX_DOCUMENT + 1
    problem = _serve_manifest(small_layout, out, OCI_MANIFEST, json.dumps(manifest).encode())
    assert problem == (f"config is {registry.MAX_DOCUMENT + 1} bytes, more than the "
                       f"{registry.MAX_DOCUMENT} allowed")
    assert _files_in_blobs(out) == []


def test_blob_larger_than_its_descriptor_is_cut_off(small_layout: Path, out: Path) -> None:
    manifest = _manifest_of(small_layout)
    layer = manifest["layers"][0]
    layer["size"] //= 2
    script = Script(manifests={"short": (OCI_MANIFEST, json.dumps(manifest).encode())})
    with ScriptedRegistry(small_layout, script) as server, \
            pytest.raises(RegistryError) as caught:
        pull(f"{server.host}/test/busybox:short", out, insecure_http=True)
    assert str(caught.value) == (
        f"blob {layer['digest']}: larger than the {layer['size']} bytes of its descriptor")
    assert layer["digest"].split(":")[1] not in " ".join(_files_in_blobs(out))


def test_missing_blob_leaves_no_partial_file(small_layout: Path, out: Path) -> None:
    manifest = _manifest_of(small_layout)
    absent = "sha256:" + "7" * 64
    manifest["layers"][0]["digest"] = absent
    script = Script(manifests={"gone": (OCI_MANIFEST, json.dumps(manifest).encode())})
    with ScriptedRegistry(small_layout, script) as server, \
            pytest.raises(RegistryError) as caught:
        pull(f"{server.host}/test/busybox:gone", out, insecure_http=True)
    assert str(caught.value) == f"registry {server.host}: blob {absent}: 404 BLOB_UNKNOWN"
    assert not [name for name in _files_in_blobs(out) if "7777" in name]


SHARED = _REPO.parent / "shared"


@pytest.mark.parametrize(("variant", "problem"), [
    ("v2-uppercase-hex-layer-digest", "layers[0].digest: digest 'sha256:"),
    ("v3-layer-content-mismatch", ": digest mismatch (got sha256:"),
    ("v4-descriptor-size-mismatch", "bytes of its descriptor"),
    ("v5-unsupported-algorithm", "uses an unsupported algorithm (supported: sha256, sha512)"),
])
def test_handed_case_br07_served_by_a_registry(out: Path, variant: str, problem: str) -> None:
    """BR-07's broken layouts, served through the registry API, are refused by pull.

    v1 (a traversal digest in index.json) and v6 (diff_ids) concern reading a layout and
    unpacking layers, not pulling: the layout reader's tests cover them.
    """
    case = out.parent / "case"
    shutil.copytree(SHARED / "cases" / "BR-07-unvalidated-digests" / variant, case)
    with ScriptedRegistry(case) as server, pytest.raises(RegistryError) as caught:
        pull(f"{server.host}/test/busybox", out, insecure_http=True)
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not (out / "index.json").exists()
    for path in out.rglob("*"):
        assert not path.is_file() or b"pwned-unverified-content" not in path.read_bytes()


def test_pinned_digest_must_match_the_content(small_layout: Path, out: Path) -> None:
    manifest = _manifest_of(small_layout)
    pinned = "sha256:" + "0" * 64
    script = Script(manifests={pinned: (OCI_MANIFEST, json.dumps(manifest).encode())})
    with ScriptedRegistry(small_layout, script) as server, \
            pytest.raises(RegistryError) as caught:
        pull(f"{server.host}/test/busybox@{pinned}", out, insecure_http=True)
    assert f"manifest test/busybox@{pinned}: digest mismatch (got sha256:" in str(caught.value)


# ----------------------------------------------------------------------------------------
# Progress


def test_rich_progress_on_a_terminal() -> None:
    main, side = os.openpty()
    try:
        with open(side, "w", closefd=False) as terminal:
            printer = ProgressPrinter(terminal)
            assert printer.fancy
            digest = "sha256:" + "e" * 64
            for done in (0, 5000, 10_000):
                printer(digest, done, 10_000)
            printer.close()
        shown = os.read(main, 65536).decode(errors="replace")
    finally:
        os.close(main)
        os.close(side)
    assert "sha256:eeeeeeeeeeee" in shown
    assert "10.0 kB" in shown or "10.0/10.0 kB" in shown


def test_plain_progress_lines() -> None:
    lines = io.StringIO()
    printer = ProgressPrinter(lines)
    digest = "sha256:" + "c" * 64
    for done in (0, 1024, 2048):
        printer(digest, done, 2048)
    printer("sha256:" + "d" * 64, 10, 10)
    printer.close()
    assert lines.getvalue().splitlines() == [
        f"blob sha256:{'c' * 12}: downloading, 2.0 KiB",
        f"blob sha256:{'c' * 12}: done",
        f"blob sha256:{'d' * 12}: present, 10 B",
    ]
