"""rootfs_fetch: digests, image sources, the safe unpacker and image -> bundle conversion,
on real OCI layouts and real tar streams (see test_images_fixtures.py)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from test_images_fixtures import (
    VICTIM,
    Layout,
    d,
    entry,
    f,
    hard,
    make_layout,
    sha,
    sym,
    tar_bytes,
    tree,
    victim_check,
    victim_prepare,
)

from minirun.errors import ConfigError, MiniRunError
from rootfs_fetch.convert import convert, fallback_base_config, resolve_user
from rootfs_fetch.digest import DigestError, VerifyingReader, parse_digest
from rootfs_fetch.source import ImageError, Platform, open_image, parse_platform
from rootfs_fetch.unpack import Mode, Options, UnpackError, unpack_image, unpack_stream

HEX = "a" * 64


def unpack(layout: Path, tmp: Path, options: Options | None = None, name: str = "rootfs",
           platform: Platform | None = None) -> Path:
    root = tmp / name
    root.mkdir()
    with open_image(str(layout), platform) as image:
        unpack_image(image, root, options or Options())
    return root


def unpack_layers(tmp: Path, *layers: list[Any], mode: Mode = Mode.FLATTEN,
                  options: Options | None = None) -> Path:
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    for position, layer in enumerate(layers):
        unpack_stream(io.BytesIO(tar_bytes(layer)), root, mode, options or Options(),
                      f"layer {position}")
    return root


# --- digests -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [f"sha256:{HEX}", "sha512:" + "0" * 128])
def test_digest_grammar_accepts_registered_algorithms(text: str) -> None:
    assert str(parse_digest(text, "here")) == text


@pytest.mark.parametrize("text", [
    f"sha256:{HEX.upper()}", "sha256:" + "a" * 63, "sha1:" + "a" * 40, "sha256:../../etc",
    f"sha256:{HEX}/..", HEX, "", "sha512:" + "a" * 64, f"SHA256:{HEX}",
])
def test_digest_grammar_refuses_everything_else_by_name(text: str) -> None:
    with pytest.raises(DigestError, match="manifest layers\\[3\\]"):
        parse_digest(text, "manifest layers[3]")


def test_digest_of_wrong_type_refused() -> None:
    with pytest.raises(DigestError, match="must be a string"):
        parse_digest(12, "config digest")


def test_verifying_reader_checks_size_and_content() -> None:
    data = b"hello"
    good = parse_digest(sha(data), "t")
    reader = VerifyingReader(io.BytesIO(data), good, 5, "blob")
    reader.drain()
    reader.verify()
    short = VerifyingReader(io.BytesIO(data), good, 4, "blob")
    with pytest.raises(DigestError, match="more than the 4 bytes"):
        short.drain()
    long = VerifyingReader(io.BytesIO(data), good, 6, "blob")
    long.drain()
    with pytest.raises(DigestError, match="5 bytes, but its descriptor says 6"):
        long.verify()
    wrong = VerifyingReader(io.BytesIO(b"hellO"), good, 5, "blob")
    wrong.drain()
    with pytest.raises(DigestError, match="content hashes to"):
        wrong.verify()


# --- sources -------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.root
def test_layers_of_each_compression_unpack(tmp_path: Path, compression: str) -> None:
    layout = make_layout(tmp_path / "img", [[d("etc"), f("etc/os", b"minirun\n")],
                                             [f("etc/more", b"2")]], compression=compression)
    root = unpack(layout, tmp_path)
    assert (root / "etc/os").read_bytes() == b"minirun\n"
    assert (root / "etc/more").read_bytes() == b"2"


@pytest.mark.root
def test_compression_is_detected_by_magic_not_media_type(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "img", [[f("a", b"1")]], compression="gzip")
    manifest_path = _only_manifest(layout)
    manifest = json.loads(manifest_path.read_text())
    manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
    _rewrite_manifest(layout, manifest)
    assert (unpack(layout, tmp_path) / "a").read_bytes() == b"1"


@pytest.mark.root
def test_large_gzip_layer_streams_through(tmp_path: Path) -> None:
    big = os.urandom(1 << 20) * 12  # 12 MiB, several decompression buffers
    layout = make_layout(tmp_path / "img", [[f("big", big), f("after", b"ok")]])
    root = unpack(layout, tmp_path)
    assert (root / "big").stat().st_size == len(big)
    assert (root / "after").read_bytes() == b"ok"


@pytest.mark.root
def test_platform_is_chosen_from_the_index(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    layout.add_image([[f("arch", b"amd64")]], tag=None,
                     platform={"os": "linux", "architecture": "amd64"})
    layout.add_image([[f("arch", b"arm64")]], tag=None, arch="arm64",
                     platform={"os": "linux", "architecture": "arm64", "variant": "v8"})
    layout.add_image([[f("arch", b"junk")]], tag=None,
                     platform={"os": "unknown", "architecture": "unknown"})
    host = unpack(layout.path, tmp_path, name="host", platform=Platform("linux", "amd64"))
    assert (host / "arch").read_bytes() == b"amd64"
    arm = unpack(layout.path, tmp_path, name="arm", platform=parse_platform("linux/arm64/v8"))
    assert (arm / "arch").read_bytes() == b"arm64"
    with pytest.raises(ImageError, match="no manifest for platform linux/s390x"):
        open_image(str(layout.path), Platform("linux", "s390x"))


def test_bad_platform_text_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="os/arch"):
        parse_platform("amd64")


@pytest.mark.root
def test_tags_choose_and_ambiguity_is_refused(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    layout.add_image([[f("which", b"one")]], tag="one")
    layout.add_image([[f("which", b"two")]], tag="two")
    with open_image(f"oci:{layout.path}:two") as image:
        assert len(image.layers) == 1
    root = tmp_path / "r"
    root.mkdir()
    with open_image(f"{layout.path}:two") as image:
        unpack_image(image, root, Options())
    assert (root / "which").read_bytes() == b"two"
    with pytest.raises(ImageError, match="2 images fit; name one with :TAG"):
        open_image(str(layout.path))
    with pytest.raises(ImageError, match="no image tagged 'three' \\(tags: one, two\\)"):
        open_image(f"oci:{layout.path}:three")


@pytest.mark.root
def test_nested_index_is_followed(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    inner = layout.add_image([[f("nested", b"yes")]], tag=None,
                             platform={"os": "linux", "architecture": "amd64"})
    nested = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
              "manifests": [inner]}
    blob = json.dumps(nested).encode()
    layout.manifests = [{"mediaType": "application/vnd.oci.image.index.v1+json",
                         "digest": layout.blob(blob), "size": len(blob),
                         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    layout.write_index()
    assert (unpack(layout.path, tmp_path) / "nested").read_bytes() == b"yes"


def test_oversized_metadata_is_refused(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "img", [[f("a")]])
    index = json.loads((layout / "index.json").read_text())
    index["padding"] = " " * (4 << 20)
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(DigestError, match="larger than 4194304 bytes"):
        open_image(str(layout))


def test_blob_that_is_a_symlink_out_of_the_layout_is_refused(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "img", [[f("a")]])
    manifest = _only_manifest(layout)
    outside = tmp_path / "outside"
    outside.write_bytes(manifest.read_bytes())
    manifest.unlink()
    manifest.symlink_to(outside)
    with pytest.raises(ImageError, match="manifest"):
        open_image(str(layout))


@pytest.mark.root
def test_wrong_layer_digest_refused_before_anything_is_written(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "img", [[f("first", b"1")], [f("second", b"2")]])
    manifest = json.loads(_only_manifest(layout).read_text())
    blob = layout / "blobs/sha256" / manifest["layers"][1]["digest"].split(":")[1]
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    root = tmp_path / "root"
    root.mkdir()
    with open_image(str(layout)) as image, pytest.raises(DigestError, match="layer 1"):
        unpack_image(image, root, Options())
    assert list(root.iterdir()) == []


def _only_manifest(layout: Path) -> Path:
    digest: str = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    return layout / "blobs/sha256" / digest.split(":")[1]


def _rewrite_manifest(layout: Path, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest).encode()
    digest = sha(data)
    (layout / "blobs/sha256" / digest.split(":")[1]).write_bytes(data)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=digest, size=len(data))
    (layout / "index.json").write_text(json.dumps(index))


# --- the unpacker ------------------------------------------------------------------------


@pytest.mark.root
def test_whiteouts_hide_lower_layers_only(tmp_path: Path) -> None:
    root = unpack_layers(
        tmp_path,
        [d("a"), f("a/gone"), d("a/sub"), f("a/sub/deep"), f("a/kept"), d("o"), f("o/old")],
        [f("a/.wh.gone"), f("a/new"), f("a/.wh.new"), f("a/.wh.sub"), f("a/.wh.never"),
         f("o/mine"), f("o/.wh..wh..opq")],
    )
    assert tree(root) == ["a/", "a/kept", "a/new", "o/", "o/mine"]


@pytest.mark.root
def test_whiteout_of_a_directory_keeps_what_this_layer_put_below(tmp_path: Path) -> None:
    root = unpack_layers(tmp_path, [d("x"), f("x/lower")], [f("x/upper"), f(".wh.x")])
    assert tree(root) == ["x/", "x/upper"]


@pytest.mark.root
def test_overlay_mode_writes_overlayfs_whiteouts(tmp_path: Path) -> None:
    root = unpack_layers(tmp_path, [d("a"), f("a/.wh.gone"), f("a/.wh..wh..opq"), f("a/new")],
                         mode=Mode.OVERLAY)
    assert tree(root) == ["a/", "a/gone c 0:0", "a/new"]
    assert os.getxattr(root / "a", "trusted.overlay.opaque") == b"y"


@pytest.mark.root
def test_dotdot_entries_are_refused_by_name(tmp_path: Path) -> None:
    victim_prepare()
    with pytest.raises(UnpackError, match=r"'sub/\.\./\.\./escape' climbs out"):
        unpack_layers(tmp_path, [f("ok"), f("sub/../../escape")])
    assert victim_check() == "VICTIM UNCHANGED"


@pytest.mark.root
def test_absolute_and_pax_names_stay_inside(tmp_path: Path) -> None:
    victim_prepare()
    pax = f("innocent", b"p", pax={"path": f"{VICTIM}/pwned-pax"})
    long_name = "l" * 150 + "/" + "n" * 120
    root = unpack_layers(tmp_path, [f(f"{VICTIM}/pwned-abs", b"a"), pax, f(long_name, b"long")])
    assert (root / VICTIM.relative_to("/") / "pwned-abs").read_bytes() == b"a"
    assert (root / VICTIM.relative_to("/") / "pwned-pax").read_bytes() == b"p"
    assert not (root / "innocent").exists()
    assert (root / long_name).read_bytes() == b"long"
    assert victim_check() == "VICTIM UNCHANGED"


@pytest.mark.root
def test_symlinked_parents_resolve_inside_the_rootfs(tmp_path: Path) -> None:
    """usrmerge: /bin -> usr/bin in a lower layer; a later bin/tool lands in usr/bin."""
    victim_prepare()
    root = unpack_layers(
        tmp_path,
        [d("usr"), d("usr/bin"), sym("bin", "usr/bin"), sym("abs", "/usr"),
         d("tmp"), d("tmp/minirun-victim"), sym("evil", str(VICTIM))],
        [f("bin/tool", b"t"), f("abs/bin/other", b"o"), f("evil/canary", b"planted")],
    )
    assert (root / "usr/bin/tool").read_bytes() == b"t"
    assert (root / "usr/bin/other").read_bytes() == b"o"
    assert (root / "bin").is_symlink()
    assert (root / "tmp/minirun-victim/canary").read_bytes() == b"planted"
    assert victim_check() == "VICTIM UNCHANGED"


@pytest.mark.root
def test_write_through_dangling_symlink_out_is_refused(tmp_path: Path) -> None:
    victim_prepare()
    with pytest.raises(UnpackError, match=r"'lnk/pwned'.*symlink to '/tmp/minirun-victim'"):
        unpack_layers(tmp_path, [sym("lnk", str(VICTIM)), f("lnk/pwned")])
    assert victim_check() == "VICTIM UNCHANGED"


@pytest.mark.root
def test_hardlinks_resolve_inside_and_never_reach_host_files(tmp_path: Path) -> None:
    victim_prepare()
    root = unpack_layers(tmp_path, [f("orig", b"same"), hard("link", "orig"),
                                    sym("out", "/tmp/minirun-victim")])
    assert (root / "orig").stat().st_ino == (root / "link").stat().st_ino
    with pytest.raises(UnpackError, match="hard link 'steal'"):
        unpack_layers(tmp_path, [hard("steal", "out/canary")])
    with pytest.raises(UnpackError, match="hard link 'steal2'"):
        unpack_layers(tmp_path, [hard("steal2", "/tmp/minirun-victim/canary")])
    assert victim_check() == "VICTIM UNCHANGED"
    assert os.stat(VICTIM / "canary").st_nlink == 1


@pytest.mark.root
def test_entries_naming_the_rootfs_itself(tmp_path: Path) -> None:
    root = unpack_layers(tmp_path, [d("./", mode=0o750, uid=7, gid=8), f("a")])
    info = root.lstat()
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o750
    assert info.st_mtime == 1_700_000_000
    assert (info.st_uid, info.st_gid) == (7, 8)
    for name in (".", "/", "./"):
        with pytest.raises(UnpackError, match="would replace the rootfs directory itself"):
            unpack_layers(tmp_path, [sym(name, "/tmp/minirun-victim")])
    assert not root.is_symlink()


@pytest.mark.root
def test_ownership_kept_setuid_and_devices_only_on_request(tmp_path: Path) -> None:
    layer = [f("suid", b"s", mode=0o4755, uid=1234, gid=5678),
             entry("null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)), sym("ln", "suid")]
    (tmp_path / "plain").mkdir()
    plain = unpack_layers(tmp_path / "plain", layer)
    info = (plain / "suid").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1234, 5678, 0o755)
    assert not (plain / "null").exists()
    shared = unpack_layers(tmp_path / "plain", [d("mail", mode=0o2775, gid=8)])
    assert stat.S_IMODE((shared / "mail").stat().st_mode) == 0o2775, "setgid dirs grant nothing"
    kept = tmp_path / "kept"
    kept.mkdir()
    root = unpack_layers(kept, layer, options=Options(keep_devices=True, keep_setuid=True))
    assert stat.S_IMODE((root / "suid").stat().st_mode) == 0o4755
    assert (root / "null").is_char_device() and (root / "null").stat().st_rdev == os.makedev(1, 3)


@pytest.mark.root
def test_later_layers_replace_types(tmp_path: Path) -> None:
    root = unpack_layers(tmp_path, [d("dir"), f("dir/child"), f("file"), sym("link", "file")],
                         [f("dir", b"now a file"), d("file"), f("link", b"plain")])
    assert (root / "dir").read_bytes() == b"now a file"
    assert (root / "file").is_dir()
    assert not (root / "link").is_symlink() and (root / "link").read_bytes() == b"plain"


@pytest.mark.root
@pytest.mark.root
def test_overlay_layers_mounted_match_the_flattened_rootfs(tmp_path: Path) -> None:
    layers = [
        [d("etc"), f("etc/a", b"1"), f("etc/b", b"2"), d("var"), d("var/lib"), f("var/lib/x")],
        [f("etc/.wh.a"), f("etc/c", b"3"), d("var/lib"), f("var/lib/.wh..wh..opq"),
         f("var/lib/y")],
        [f("etc/b", b"changed"), f(".wh.var")],
    ]
    flat = tmp_path / "flat"
    flat.mkdir()
    unpack_layers(flat, *layers)
    dirs = []
    for position, layer in enumerate(layers):
        layer_dir = tmp_path / f"layer{position}"
        layer_dir.mkdir()
        unpack_layers(layer_dir, layer, mode=Mode.OVERLAY)
        dirs.append(str(layer_dir / "root"))
    merged = tmp_path / "merged"
    merged.mkdir()
    lower = ":".join(reversed(dirs))
    # A private mount namespace: the overlay disappears with the short-lived unshare process.
    listing = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t overlay overlay -o lowerdir={lower} {merged} && cd {merged} && "
         "find . -mindepth 1 | sort && cat etc/b"],
        capture_output=True, text=True, check=True).stdout.split()
    assert listing == ["./etc", "./etc/b", "./etc/c", "changed"]
    assert [f"./{p.rstrip('/')}" for p in tree(flat / "root")] == listing[:-1]


# --- conversion ----------------------------------------------------------------------------


def accounts(tmp_path: Path, passwd: str, group: str = "") -> Path:
    root = tmp_path / "accounts"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(passwd)
    (root / "etc/group").write_text(group)
    return root


PASSWD = ("root:x:0:0:root:/root:/bin/sh\n1000:x:0:0:trap:/:/bin/sh\n"
          "user:x:1000:1000::/home/user:/bin/sh\napp:x:2000:2001::/app:/bin/sh\n")
GROUP = "root:x:0:\nuser:x:1000:\nstaff:x:50:app,user\nwheel:x:10:app\napp:x:2001:\n"


@pytest.mark.parametrize(("spec", "expected"), [
    ("", (0, 0, ())), ("0", (0, 0, ())), ("1000", (1000, 1000, (50,))),
    ("1000:1000", (1000, 1000, ())), ("user", (1000, 1000, (50,))),
    ("app", (2000, 2001, (50, 10))), ("app:wheel", (2000, 10, ())), ("app:7", (2000, 7, ())),
    ("4242", (4242, 0, ())), ("4294967294:4294967294", (4294967294, 4294967294, ())),
])
def test_user_resolution(tmp_path: Path, spec: str, expected: tuple[int, int, tuple[int, ...]]
                         ) -> None:
    root = accounts(tmp_path, PASSWD, GROUP)
    user = resolve_user(spec, [root], "img")
    assert (user.uid, user.gid, user.additional_gids) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("nobody", "user 'nobody' is not in the image's /etc/passwd"),
    ("app:nogroup", "group 'nogroup' is not in the image's /etc/group"),
    ("4294967295", "uid 4294967295 is out of range"),
    ("1:99999999999", "gid 99999999999 is out of range"),
])
def test_user_errors_name_what_is_wrong(tmp_path: Path, spec: str, message: str) -> None:
    root = accounts(tmp_path, PASSWD, GROUP)
    with pytest.raises(ConfigError, match=message):
        resolve_user(spec, [root], "img")


@pytest.mark.root
def test_passwd_symlinked_out_of_the_rootfs_is_not_read(tmp_path: Path) -> None:
    victim_prepare()  # holds passwd "app:x:0:0:HOST-FILE-WAS-READ"
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").symlink_to(VICTIM / "passwd")
    with pytest.raises(ConfigError, match="user 'app' is not in the image's /etc/passwd"):
        resolve_user("app", [root], "img")


@pytest.mark.root
def test_user_lookup_across_overlay_layers_stops_at_whiteouts(tmp_path: Path) -> None:
    lower = accounts(tmp_path, PASSWD, GROUP)
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    assert resolve_user("app", [upper, lower], "img").uid == 2000
    os.mknod(upper / "etc/passwd", stat.S_IFCHR, os.makedev(0, 0))
    with pytest.raises(ConfigError, match="user 'app'"):
        resolve_user("app", [upper, lower], "img")
    (upper / "etc/passwd").unlink()
    os.setxattr(upper / "etc", "trusted.overlay.opaque", b"y")
    with pytest.raises(ConfigError, match="user 'app'"):
        resolve_user("app", [upper, lower], "img")
    (upper / "etc").rmdir()
    os.mknod(upper / "etc", stat.S_IFCHR, os.makedev(0, 0))
    with pytest.raises(ConfigError, match="user 'app'"):
        resolve_user("app", [upper, lower], "img")


def test_convert_follows_the_conversion_rules(tmp_path: Path) -> None:
    root = accounts(tmp_path, PASSWD, GROUP)
    image = {"os": "linux", "architecture": "amd64", "author": "me", "config": {
        "Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/app/bin", "MODE=prod"],
        "WorkingDir": "/srv//app/", "User": "app", "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "StopSignal": "SIGQUIT", "Labels": {"com.example.team": "infra"},
        "Volumes": {"/data": {}}}}
    base = fallback_base_config()
    config = convert(image, base, root, where="img")
    process = config["process"]
    assert process["args"] == ["/bin/app", "--serve"]
    assert process["env"] == ["PATH=/app/bin", "TERM=xterm", "MODE=prod"]
    assert process["cwd"] == "/srv/app"
    assert process["user"] == {"uid": 2000, "gid": 2001, "additionalGids": [50, 10]}
    notes = config["annotations"]
    assert notes["org.opencontainers.image.exposedPorts"] == "53/udp,80/tcp"
    assert notes["org.opencontainers.image.stopSignal"] == "SIGQUIT"
    assert notes["com.example.team"] == "infra"
    assert notes["org.opencontainers.image.author"] == "me"
    assert config["mounts"][-1] == {"destination": "/data", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["nosuid", "nodev", "mode=755"]}
    assert base["process"]["args"] == ["sh"], "the base config must not be changed"
    caps = config["process"]["capabilities"]
    assert "inheritable" not in caps and "ambient" not in caps


@pytest.mark.parametrize(("workdir", "message"), [
    ("relative/dir", "is not an absolute path"), ("/proc/self/fd/7", "inside /proc"),
    ("/proc", "inside /proc"), ("/x/../proc/1/cwd", "inside /proc"),
])
def test_bad_working_directories_are_refused(workdir: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"config.WorkingDir: .*{message}"):
        convert({"config": {"WorkingDir": workdir}}, fallback_base_config())


def test_missing_command_keeps_the_base_args() -> None:
    assert convert({"config": {}}, fallback_base_config())["process"]["args"] == ["sh"]
    assert convert({}, fallback_base_config())["process"]["cwd"] == "/"


def test_errors_are_minirun_errors() -> None:
    assert issubclass(UnpackError, MiniRunError) and issubclass(DigestError, MiniRunError)


@pytest.mark.root
def test_tar_without_end_blocks_is_accepted_but_a_cut_file_is_not(tmp_path: Path) -> None:
    """umoci 0.4 writes layers that stop right after the last file's data."""
    whole = tar_bytes([f("a", b"1" * 700), f("b", b"22")])
    trailer_cut = whole[: 3 * 512 + 512 + 2]  # a: header + 2 blocks; b: header + 2 bytes
    root = tmp_path / "root"
    root.mkdir()
    unpack_stream(io.BytesIO(trailer_cut), root, Mode.FLATTEN, Options(), "layer 0")
    assert (root / "b").read_bytes() == b"22"
    with pytest.raises(UnpackError, match="ends inside entry 'b'"):
        unpack_stream(io.BytesIO(trailer_cut[:-1]), root, Mode.FLATTEN, Options(), "layer 0")


@pytest.mark.root
def test_docker25_archive_with_index_and_manifest_json(tmp_path: Path) -> None:
    """Docker 25+ `docker save` writes an OCI layout inside the tar, plus manifest.json."""
    layout = make_layout(tmp_path / "img", [[f("from-docker25", b"yes")]])
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["annotations"] = {
        "io.containerd.image.name": "docker.io/library/demo:1.0",
        "org.opencontainers.image.ref.name": "1.0"}
    (layout / "index.json").write_text(json.dumps(index))
    manifest = json.loads(_only_manifest(layout).read_text())
    legacy = [{"Config": "blobs/sha256/" + manifest["config"]["digest"][7:],
               "RepoTags": ["demo:1.0"],
               "Layers": ["blobs/sha256/" + manifest["layers"][0]["digest"][7:]]}]
    (layout / "manifest.json").write_text(json.dumps(legacy))
    archive = tmp_path / "demo.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    for reference in (str(archive), f"docker-archive:{archive}", f"{archive}:demo:1.0"):
        root = unpack(Path(reference), tmp_path, name=f"r{abs(hash(reference))}")
        assert (root / "from-docker25").read_bytes() == b"yes"


def test_index_without_platform_is_checked_against_the_config(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "img", [[f("a")]])
    with pytest.raises(ImageError, match="the image is for linux/amd64, not linux/arm64"):
        open_image(str(layout), Platform("linux", "arm64"))


def test_efficiency_of_overwritten_removed_and_opaqued_files(tmp_path: Path) -> None:
    from rootfs_fetch.efficiency import efficiency

    layout = make_layout(tmp_path / "img", [
        [d("a"), f("a/big", b"1" * 1000), f("a/small", b"2" * 10), d("o"), f("o/x", b"3" * 100),
         d("dir"), f("dir/in", b"4" * 40), f("kept", b"5" * 5)],
        [f("a/big", b"new"), f("a/.wh.small"), f("o/.wh..wh..opq"), f("o/y", b"6"),
         f("dir", b"now a file")],
        [f("a/big", b"newest")],
    ])
    with open_image(str(layout)) as image:
        report = efficiency(image)
    assert [layer.wasted for layer in report.layers] == [1000 + 10 + 100 + 40, 3, 0]
    assert report.size == 1155 + 3 + 1 + 10 + 6
    assert report.score == pytest.approx((report.size - 1153) / report.size)


@pytest.mark.root
@pytest.mark.root
def test_prepare_twice_unpacks_nothing_and_clears_crash_leftovers(tmp_path: Path) -> None:
    from rootfs_fetch.store import images, prepare

    layout = make_layout(tmp_path / "img", [[d("etc"), f("etc/passwd", PASSWD.encode())],
                                             [f("etc/.wh.gone"), f("app", b"a")]],
                         config={"User": "app", "Cmd": ["/app"]})
    store = tmp_path / "store"
    first = prepare(str(layout), store)
    assert first.unpacked == 2
    assert [p.parent.name for p in first.lowerdirs] == ["layers", "layers"]
    assert tree(first.lowerdirs[0]) == ["app", "etc/", "etc/gone c 0:0"]
    assert first.config["process"]["user"]["uid"] == 2000
    assert first.config["process"]["args"] == ["/app"]
    (store / "tmp" / "layer-crashed").mkdir()
    again = prepare(str(layout), store)
    assert again.unpacked == 0 and again.lowerdirs == first.lowerdirs
    assert list((store / "tmp").iterdir()) == []
    assert [(i.id, i.layers) for i in images(store)] == [
        (first.image_id, tuple(str(p.name).replace("-", ":", 1) for p in
                               reversed(first.lowerdirs)))]


def _docker_save(path: Path, layer_members: dict[str, bytes | str], layers: list[str],
                 diff_ids: list[str]) -> Path:
    """A legacy `docker save` archive; a str value makes a symlink member to that name."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_name = sha(config)[7:] + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["demo:latest"],
                            "Layers": layers}]).encode()
    with tarfile.open(path, "w") as tar:
        files: dict[str, bytes | str] = {config_name: config, "manifest.json": manifest,
                                         **layer_members}
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


@pytest.mark.root
def test_docker_save_layer_links_are_followed_inside_the_archive_only(tmp_path: Path) -> None:
    layer = tar_bytes([f("shared", b"s")])
    archive = _docker_save(tmp_path / "save.tar", {"a/layer.tar": layer,
                                                   "b/layer.tar": "../a/layer.tar"},
                           ["a/layer.tar", "b/layer.tar"], [sha(layer), sha(layer)])
    assert (unpack(archive, tmp_path) / "shared").read_bytes() == b"s"
    escaping = _docker_save(tmp_path / "bad.tar", {"a/layer.tar": "../../etc/passwd"},
                            ["a/layer.tar"], [sha(layer)])
    with open_image(str(escaping)) as image, pytest.raises(ImageError, match="links out"):
        unpack_image(image, tmp_path / "rootfs", Options())
