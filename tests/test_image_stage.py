"""The image stage: an image's layers, unpacked once into the store, stacked by overlayfs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import MINIRUN, minirun

pytestmark = pytest.mark.root


def _umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def two_layer_image(tmp_path_factory: pytest.TempPathFactory,
                    busybox_rootfs_module: Path) -> Path:
    """A busybox image with a second layer that adds /etc/motd, built with umoci."""
    layout = tmp_path_factory.mktemp("image") / "layout"
    extra = tmp_path_factory.mktemp("extra")
    (extra / "etc").mkdir()
    (extra / "etc" / "motd").write_text("second layer\n")
    _umoci("init", "--layout", str(layout))
    _umoci("new", "--image", f"{layout}:latest")
    _umoci("insert", "--image", f"{layout}:latest", str(busybox_rootfs_module), "/")
    _umoci("insert", "--image", f"{layout}:latest", str(extra / "etc"), "/etc")
    script = ("cat /etc/motd; grep ' / / ' /proc/self/mountinfo | cut -d' ' -f9; "
              "echo written > /new-file; ls /new-file; pwd")
    _umoci("config", "--image", f"{layout}:latest", "--config.cmd", "sh",
           "--config.cmd=-c", f"--config.cmd={script}", "--config.workingdir", "/srv/app")
    return layout


@pytest.fixture(scope="module")
def busybox_rootfs_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support import make_rootfs

    return make_rootfs(tmp_path_factory.mktemp("bb") / "rootfs")


def test_image_runs_on_an_overlay_and_its_writes_vanish(two_layer_image: Path,
                                                       tmp_path: Path) -> None:
    store = tmp_path / "store"
    out = minirun("run", "--stage", "image", "--store", str(store), str(two_layer_image),
                  "img-a", check=True).stdout.split()
    assert out == ["second", "layer", "overlay", "/new-file", "/srv/app"]
    assert list((store / "containers").iterdir()) == []  # upper dir removed with the container
    layers = sorted(p for p in (store / "layers").iterdir() if p.is_dir())
    assert len(layers) == 2
    assert not any((layer / "new-file").exists() for layer in layers)


def test_second_container_of_an_image_unpacks_nothing(two_layer_image: Path,
                                                     tmp_path: Path) -> None:
    store = tmp_path / "store"
    minirun("run", "--store", str(store), str(two_layer_image), "first", check=True)
    before = {p.name: p.stat().st_ino for p in (store / "layers").iterdir() if p.is_dir()}
    result = minirun("run", "--store", str(store), str(two_layer_image), "second", check=True)
    assert "second layer" in result.stdout
    assert {p.name: p.stat().st_ino for p in (store / "layers").iterdir() if p.is_dir()} == before


def test_image_needs_the_image_stage(two_layer_image: Path, tmp_path: Path) -> None:
    result = minirun("run", "--stage", "namespaces", "--store", str(tmp_path / "store"),
                     str(two_layer_image))
    assert result.returncode == 2
    assert "needs stage image or oci" in result.stderr
    assert not (tmp_path / "store").exists()


def test_explain_shows_the_overlay_step(two_layer_image: Path, tmp_path: Path) -> None:
    out = minirun("run", "--explain", "--stage", "image", "--store", str(tmp_path / "s"),
                  str(two_layer_image), check=True).stdout
    assert "mount(overlay ->" in out and "lowerdir=2 layers" in out and "[image]" in out


def test_a_command_after_the_image_replaces_its_cmd(two_layer_image: Path,
                                                     tmp_path: Path) -> None:
    out = minirun("run", "--store", str(tmp_path / "store"), str(two_layer_image), "cmd",
                  "--", "sh", "-c", "echo overridden; cat /etc/motd", check=True).stdout
    assert out == "overridden\nsecond layer\n"


def test_layer_progress_is_a_line_in_a_log_and_a_bar_on_a_terminal(
        two_layer_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIRUN_LOG", "info")
    logged = minirun("run", "--stage", "image", "--store", str(tmp_path / "a"),
                     str(two_layer_image), "p1", "--", "true", check=True).stderr
    assert logged.count("into the store") == 2  # one quiet line per layer
    command = (f"{MINIRUN} unpack {two_layer_image} {tmp_path / 'bundle'}")
    shown = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                           text=True, check=True, stdin=subprocess.DEVNULL).stdout
    assert "unpack " in shown and "━" in shown  # rich's bar, drawn on the pty
