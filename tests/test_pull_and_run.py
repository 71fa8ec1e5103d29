"""The engineer's path: pull an image from a registry, then run it at the image stage."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from registry_fixture import Image, build_layout, run_registry, skopeo_push
from support import minirun

pytestmark = pytest.mark.root


def test_pull_then_run_at_the_image_stage(tmp_path: Path) -> None:
    source = tmp_path / "source"
    build_layout(source, [Image("amd64", {"etc/motd": b"pulled over the v2 API\n"},
                                with_busybox=True)])
    with run_registry(tmp_path) as registry:
        skopeo_push(source, registry.host, "demo/app")
        layout = tmp_path / "pulled"
        pulled = minirun("pull", "--insecure-http", f"{registry.host}/demo/app:latest",
                         str(layout), check=True)
        assert pulled.stdout.startswith("sha256:")
    inspected = subprocess.run(["skopeo", "inspect", f"oci:{layout}:latest"],
                               capture_output=True, text=True)
    assert inspected.returncode == 0, inspected.stderr
    # The test image has no Cmd: unpack it into a bundle and say what to run.
    bundle = tmp_path / "bundle"
    minirun("unpack", str(layout), str(bundle), check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["/bin/busybox", "cat", "/etc/motd"]
    (bundle / "config.json").write_text(json.dumps(config))
    out = minirun("run", str(bundle), "pulled", check=True).stdout
    assert out == "pulled over the v2 API\n"


def test_pull_refuses_plain_http_to_another_host(tmp_path: Path) -> None:
    result = minirun("pull", "--insecure-http", "192.0.2.1:5000/x:latest",
                     str(tmp_path / "layout"))
    assert result.returncode == 2
    assert "loopback" in result.stderr
    assert not (tmp_path / "layout").exists()
