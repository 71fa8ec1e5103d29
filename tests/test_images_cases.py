"""The hostile image cases of ../shared/cases, each through ``minirun unpack``'s command
function, on a copy of the case, with the host victim directory checked after each."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest
from test_images_fixtures import VICTIM, copy_case, victim_check, victim_prepare

from minirun.errors import ConfigError, MiniRunError
from rootfs_fetch.commands import add_unpack_arguments, unpack_command

pytestmark = pytest.mark.root  # unpacking keeps owners: chown(2) to uid 0 and others

DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def run_unpack(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_unpack_arguments(parser)
    return unpack_command(parser.parse_args(list(argv)))


@pytest.fixture
def victim() -> object:
    victim_prepare()
    yield VICTIM
    assert victim_check() == "VICTIM UNCHANGED"


def bundle_untouched(bundle: Path) -> bool:
    return not bundle.exists() or sorted(p.name for p in bundle.iterdir()) == []


@pytest.mark.parametrize(("variant", "name"), [
    ("image-dot", "'.'"), ("image-slash", "'/'"), ("image-dotslash", "'./'")])
def test_br01_layer_replacing_the_rootfs_is_refused(tmp_path: Path, victim: object,
                                                    variant: str, name: str) -> None:
    case = copy_case("BR-01-umoci-rootfs-dot-symlink", tmp_path)
    bundle = tmp_path / "bundle"
    with pytest.raises(MiniRunError, match=f"entry {name} would replace the rootfs"):
        run_unpack(str(case / variant), str(bundle))
    assert bundle_untouched(bundle)
    assert not (VICTIM / "pwned-br01").exists()


@pytest.mark.parametrize("image", ["oci", "docker-save.tar"])
def test_br02_traversal_is_refused_naming_the_first_bad_entry(tmp_path: Path, victim: object,
                                                              image: str) -> None:
    case = copy_case("BR-02-tar-path-traversal", tmp_path)
    bundle = tmp_path / "scratch" / "bundle"
    with pytest.raises(MiniRunError, match=r"entry '(\.\./)+tmp/minirun-victim/pwned-dotdot'"):
        run_unpack(str(case / image), str(bundle))
    assert bundle_untouched(bundle)
    assert not (tmp_path / "scratch" / "pwned-in-bundle-dir").exists()


@pytest.mark.parametrize(("image", "entry"), [
    ("two-layer.docker-save.tar", "etc/evil/pwned-br03-abs"),
    ("oci-two-layer", "etc/evil/pwned-br03-abs"),
    ("single-layer.docker-save.tar", "lnk/pwned-br03-single"),
])
def test_br03_write_through_a_planted_symlink_is_refused(tmp_path: Path, victim: object,
                                                         image: str, entry: str) -> None:
    case = copy_case("BR-03-symlink-then-write-docker-save", tmp_path)
    bundle = tmp_path / "bundle"
    with pytest.raises(MiniRunError, match=f"entry '{entry}'.*symlink to '/tmp/minirun-victim'"):
        run_unpack(str(case / image), str(bundle))
    assert bundle_untouched(bundle)


def test_br06_opaque_whiteouts_match_the_expected_tree(tmp_path: Path, victim: object) -> None:
    case = copy_case("BR-06-opaque-whiteout-semantics", tmp_path)
    bundle = tmp_path / "bundle"
    assert run_unpack(str(case / "oci"), str(bundle)) == 0
    expected = [line for line in (case / "expected-tree.txt").read_text().splitlines()
                if line and not line.startswith("#")]
    rootfs = bundle / "rootfs"
    found = sorted(p.relative_to(rootfs).as_posix() + ("/" if p.is_dir() else "")
                   for p in rootfs.rglob("*"))
    assert found == sorted(expected)


@pytest.mark.parametrize(("variant", "message"), [
    ("v1-traversal-in-index-digest", "manifest digest: digest 'sha256:\\.\\./.*' is malformed"),
    ("v2-uppercase-hex-layer-digest", "manifest layers\\[0\\]: digest 'sha256:ACC32A.*malformed"),
    ("v3-layer-content-mismatch", "layer 0 \\(sha256:acc32a.*\\): content hashes to"),
    ("v4-descriptor-size-mismatch", "layer 0 \\(sha256:acc32a.*\\): more than the 9728 bytes"),
    ("v5-unsupported-algorithm", "layers\\[0\\]: digest 'sha1:.*unsupported algorithm"),
    ("v6-config-diffid-mismatch", "layer 0 .* uncompressed \\(diff_id\\): content hashes to"),
])
def test_br07_bad_descriptors_refused_before_the_bundle_is_touched(
        tmp_path: Path, victim: object, variant: str, message: str) -> None:
    case = copy_case("BR-07-unvalidated-digests", tmp_path)
    bundle = tmp_path / "bundle"
    with pytest.raises(MiniRunError, match=message):
        run_unpack(str(case / variant), str(bundle))
    assert bundle_untouched(bundle)


@pytest.mark.parametrize("variant", ["user-1000", "user-1000-colon-1000"])
def test_br09_numeric_user_is_an_id(tmp_path: Path, victim: object, variant: str) -> None:
    case = copy_case("BR-09-numeric-username", tmp_path)
    bundle = tmp_path / "bundle"
    assert run_unpack(str(case / variant), str(bundle)) == 0
    user = json.loads((bundle / "config.json").read_text())["process"]["user"]
    assert (user["uid"], user["gid"]) == (1000, 1000)


def test_br12_workdir_under_proc_is_not_laundered(tmp_path: Path, victim: object) -> None:
    case = copy_case("BR-12-leaky-vessels-cwd-proc-self-fd", tmp_path)
    bundle = tmp_path / "bundle"
    with pytest.raises(ConfigError, match=r"config\.WorkingDir: '/proc/self/fd/7' is inside /proc"):
        run_unpack(str(case / "image-workdir-proc-self-fd-7"), str(bundle))
    assert not (bundle / "config.json").exists() and not (bundle / "rootfs").exists()


def test_br23_converted_bundle_has_no_inheritable_capabilities(tmp_path: Path,
                                                                victim: object) -> None:
    case = copy_case("BR-23-inheritable-capabilities", tmp_path)
    bundle = tmp_path / "bundle"
    assert run_unpack(str(case / "image-plain"), str(bundle)) == 0
    caps = json.loads((bundle / "config.json").read_text())["process"]["capabilities"]
    assert not caps.get("inheritable") and not caps.get("ambient")
    for kind in ("bounding", "effective", "permitted"):
        assert sorted(caps[kind]) == DEFAULT_CAPS


def test_unpack_refuses_a_non_empty_rootfs(tmp_path: Path) -> None:
    case = copy_case("BR-23-inheritable-capabilities", tmp_path)
    (tmp_path / "bundle" / "rootfs").mkdir(parents=True)
    (tmp_path / "bundle" / "rootfs" / "old").write_text("keep me")
    with pytest.raises(MiniRunError, match="exists and is not empty"):
        run_unpack(str(case / "image-plain"), str(tmp_path / "bundle"))
    assert (tmp_path / "bundle" / "rootfs" / "old").read_text() == "keep me"


def test_minirun_command_line_prints_one_line_per_refusal(tmp_path: Path) -> None:
    """Through bin/minirun: exit status 2 and one line naming the bad descriptor, no traceback."""
    case = copy_case("BR-07-unvalidated-digests", tmp_path)
    minirun = Path(__file__).resolve().parent.parent / "bin" / "minirun"
    done = subprocess.run([str(minirun), "unpack", str(case / "v5-unsupported-algorithm"),
                           str(tmp_path / "bundle")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "digest 'sha1:43ead21d3c7fb53aca7594835f0916c7cda3be5c'" in done.stderr
    good = copy_case("BR-09-numeric-username", tmp_path)
    done = subprocess.run([str(minirun), "unpack", str(good / "user-1000"),
                           str(tmp_path / "good")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "good/config.json").read_text())["process"]["user"]["uid"] == 1000
