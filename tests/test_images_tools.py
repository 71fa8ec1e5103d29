"""Images built by real tools from Debian packages: a busybox-static rootfs made into an OCI
image by umoci, copied by skopeo into oci-archive and docker-archive tars. minirun's unpacker
must produce what umoci itself unpacks; the store must unpack each layer once and give an
overlay that shows the same tree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_images_fixtures import REPO

from rootfs_fetch.commands import (
    add_images_arguments,
    add_rmi_arguments,
    add_unpack_arguments,
    images_command,
    rmi_command,
    unpack_command,
)
from rootfs_fetch.efficiency import efficiency
from rootfs_fetch.source import open_image
from rootfs_fetch.store import StoreError, images, prepare, rmi

pytestmark = [pytest.mark.root, pytest.mark.slow]


def run(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """OCI layout ``oci`` with tags ``base`` (busybox rootfs, 1 layer) and ``app`` (base plus
    a layer that overwrites, adds, removes and opaques), and its skopeo copies."""
    work = tmp_path_factory.mktemp("built")
    rootfs = work / "busybox"
    run("sh", REPO / "rootfs-fetch/busybox-rootfs.sh", rootfs)
    (rootfs / "etc/motd").write_text("old motd\n" * 100)
    (rootfs / "srv/old").mkdir(parents=True)
    (rootfs / "srv/old/data").write_text("lower data\n")
    (rootfs / "etc/passwd").write_text(
        (rootfs / "etc/passwd").read_text() + "web:x:33:33::/srv:/bin/sh\n")
    (rootfs / "etc/group").write_text((rootfs / "etc/group").read_text() + "www:x:33:\n"
                                      "adm:x:4:web\n")
    layout = work / "oci"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:base")
    run("umoci", "insert", "--image", f"{layout}:base", rootfs, "/")
    run("umoci", "config", "--image", f"{layout}:base", "--config.cmd", "/bin/sh",
        "--config.workingdir", "/srv", "--config.user", "web", "--config.env", "MODE=test",
        "--config.label", "org.example=yes")
    (work / "motd").write_text("new motd\n")
    (work / "srv-new").mkdir()
    (work / "srv-new/fresh").write_text("fresh\n")
    run("umoci", "insert", "--image", f"{layout}:base", "--tag", "app", work / "motd",
        "/etc/motd")
    run("umoci", "insert", "--image", f"{layout}:app", "--whiteout", "/bin/vi")
    run("umoci", "insert", "--image", f"{layout}:app", "--opaque", work / "srv-new", "/srv")
    run("skopeo", "copy", f"oci:{layout}:app", f"oci-archive:{work / 'app.oci.tar'}:app")
    run("skopeo", "copy", f"oci:{layout}:app",
        f"docker-archive:{work / 'app.docker.tar'}:minirun/app:latest")
    yield work


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """What matters in a rootfs: kinds, modes, owners, mtimes of non-directories, link
    targets, file contents."""
    result: dict[str, tuple[object, ...]] = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        rel = path.relative_to(root).as_posix()
        if stat.S_ISLNK(info.st_mode):
            detail: object = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            detail = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            detail = None
        # A directory that a later layer changes gets the time of the unpack, in umoci too.
        mtime = None if stat.S_ISDIR(info.st_mode) else int(info.st_mtime)
        result[rel] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid,
                       info.st_gid, mtime, detail)
    return result


def unpack_args(image: str, bundle: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_unpack_arguments(parser)
    return parser.parse_args([image, str(bundle)])


@pytest.mark.parametrize("tag", ["base", "app"])
def test_unpack_matches_umoci(built: Path, tmp_path: Path, tag: str) -> None:
    ours = tmp_path / "ours"
    assert unpack_command(unpack_args(f"oci:{built / 'oci'}:{tag}", ours)) == 0
    theirs = tmp_path / "theirs"
    run("umoci", "unpack", "--image", f"{built / 'oci'}:{tag}", theirs)
    mine, umoci = snapshot(ours / "rootfs"), snapshot(theirs / "rootfs")
    assert mine == umoci
    if tag == "app":
        assert (ours / "rootfs/etc/motd").read_text() == "new motd\n"
        assert not (ours / "rootfs/bin/vi").exists()
        assert sorted(os.listdir(ours / "rootfs/srv")) == ["fresh"]


@pytest.mark.parametrize("archive", ["app.oci.tar", "app.docker.tar"])
def test_skopeo_archives_unpack_like_the_layout(built: Path, tmp_path: Path,
                                                archive: str) -> None:
    layout = tmp_path / "layout"
    unpack_command(unpack_args(f"oci:{built / 'oci'}:app", layout))
    copy = tmp_path / "copy"
    assert unpack_command(unpack_args(str(built / archive), copy)) == 0
    assert snapshot(copy / "rootfs") == snapshot(layout / "rootfs")


def test_converted_config_from_the_umoci_image(built: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    unpack_command(unpack_args(f"docker-archive:{built / 'app.docker.tar'}", bundle))
    config = json.loads((bundle / "config.json").read_text())
    process = config["process"]
    assert process["args"] == ["/bin/sh"]
    assert process["cwd"] == "/srv"
    assert process["user"] == {"uid": 33, "gid": 33, "additionalGids": [4]}
    assert "MODE=test" in process["env"]
    assert config["annotations"]["org.example"] == "yes"
    assert config["root"]["path"] == "rootfs"


def test_store_unpacks_each_layer_once_and_overlays_like_a_flat_unpack(
        built: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    base = prepare(f"oci:{built / 'oci'}:base", store)
    assert base.unpacked == 1
    first = prepare(f"oci:{built / 'oci'}:app", store)
    assert first.unpacked == 3, "the base layer is shared, three new layers"
    again = prepare(f"oci:{built / 'oci'}:app", store)
    assert again.unpacked == 0
    assert again.lowerdirs == first.lowerdirs and len(first.lowerdirs) == 4
    assert first.lowerdirs[-1] == base.lowerdirs[0], "top-most first: base layer is last"
    assert again.config["process"]["user"]["uid"] == 33
    flat = tmp_path / "flat"
    unpack_command(unpack_args(f"oci:{built / 'oci'}:app", flat))
    merged = tmp_path / "merged"
    merged.mkdir()
    lower = ":".join(str(p) for p in first.lowerdirs)
    # Mounted in a private mount namespace that ends with the command: nothing to clean up.
    listing = run("unshare", "-m", "--propagation", "private", "sh", "-c",
                  f"mount -t overlay overlay -o lowerdir={lower} {merged} && "
                  f"cd {merged} && find . | sort && cat etc/motd")
    expected = run("sh", "-c", f"cd {flat / 'rootfs'} && find . | sort && cat etc/motd")
    assert listing == expected


def test_images_and_rmi_keep_shared_layers(built: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    base = prepare(f"oci:{built / 'oci'}:base", store)
    app = prepare(f"oci:{built / 'oci'}:app", store)
    listed = {i.id: i for i in images(store)}
    assert set(listed) == {base.image_id, app.image_id}
    assert len(listed[app.image_id].layers) == 4 and listed[app.image_id].size > 1_000_000
    parser = argparse.ArgumentParser()
    add_images_arguments(parser)
    images_command(parser.parse_args(["--store", str(store)]))
    assert app.image_id.removeprefix("sha256:")[:12] in capsys.readouterr().out
    with pytest.raises(StoreError, match="used by a container"):
        rmi(store, app.image_id, {app.image_id})
    parser = argparse.ArgumentParser()
    add_rmi_arguments(parser)
    rmi_command(parser.parse_args([app.image_id[7:19], "--store", str(store)]))
    assert [p.exists() for p in app.lowerdirs] == [False, False, False, True]
    assert rmi(store, f"oci:{built / 'oci'}:base") == [str(_diff_ids(base)[0])]
    assert list((store / "layers").iterdir()) == [] and images(store) == []


def _diff_ids(prepared: object) -> list[str]:
    return [f"sha256:{p.name.split('-', 1)[1]}" for p in prepared.lowerdirs]  # type: ignore[attr-defined]


def test_efficiency_counts_overwritten_and_removed_bytes(built: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    with open_image(f"oci:{built / 'oci'}:app") as image:
        report = efficiency(image)
    busybox = (Path("/bin/busybox")).stat().st_size
    old_motd, lower_data = len("old motd\n" * 100), len("lower data\n")
    # /bin/vi is a symlink (no bytes); motd and /srv/old/data are the waste.
    assert report.layers[0].wasted == old_motd + lower_data
    assert report.wasted == old_motd + lower_data
    assert report.size > busybox
    assert 0.99 < report.score < 1.0
    parser = argparse.ArgumentParser()
    add_images_arguments(parser)
    images_command(parser.parse_args(["--efficiency", f"oci:{built / 'oci'}:app"]))
    assert "efficiency 99.9" in capsys.readouterr().out


def test_debian_rootfs_script_makes_a_working_minbase(tmp_path: Path) -> None:
    """debian-rootfs.sh: debootstrap once into its cache (minutes, needs Debian's mirror),
    then a copy; the copy runs Debian's own dpkg under chroot."""
    dest = tmp_path / "debian"
    run("sh", REPO / "rootfs-fetch/debian-rootfs.sh", dest)
    assert (dest / "etc/debian_version").read_text().startswith("12.")
    assert not (dest / ".complete").exists()
    assert run("chroot", dest, "/usr/bin/dpkg-query", "-W", "-f=${Package}\\n", "dpkg").strip() \
        == "dpkg"
