"""Running an image directly (the image stage): layers from the store, a bundle per container.

``minirun run IMAGE`` prepares the image's layers in the content store (each unpacked once,
keyed by its diff_id), writes a bundle for this container under STORE/containers/ID with the
converted config.json and an empty rootfs directory, and hands the runtime an overlay of the
layers plus a writable upper directory in that bundle. The bundle, with everything the
container wrote, is removed when the container ends.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from minirun.errors import ConfigError
from minirun.isolation.overlay import Overlay
from minirun.spec import CONFIG_NAME, Spec, parse


@dataclass
class ImageContainer:
    spec: Spec
    overlay: Overlay
    bundle: Path
    image_id: str

    def remove(self) -> None:
        shutil.rmtree(self.bundle, ignore_errors=True)


def prepare(reference: str, store: Path, container_id: str) -> ImageContainer:
    from rootfs_fetch import store as content_store

    bundle = store / "containers" / container_id
    if bundle.exists():
        raise ConfigError(str(bundle), "", f"a container named {container_id!r} exists "
                                           "already (choose another id)")
    from rootfs_fetch.progress import LayerProgress

    with LayerProgress():
        prepared = content_store.prepare(reference, store)
    (bundle / "rootfs").mkdir(parents=True, mode=0o755)
    try:
        config = dict(prepared.config)
        config["root"] = {**config.get("root", {}), "path": "rootfs"}
        config.setdefault("annotations", {})["org.minirun.image"] = prepared.image_id
        file = bundle / CONFIG_NAME
        file.write_text(json.dumps(config, indent=2))
        spec = parse(config, str(bundle), str(file))
        layers = Overlay(tuple(os.fspath(p) for p in prepared.lowerdirs),
                         os.fspath(bundle / "upper"), os.fspath(bundle / "work"))
    except BaseException:
        shutil.rmtree(bundle, ignore_errors=True)
        raise
    return ImageContainer(spec, layers, bundle, prepared.image_id)


def images_in_use(store: Path) -> frozenset[str]:
    """Image ids of the containers that run now (their bundles exist)."""
    used = set()
    for config in (store / "containers").glob(f"*/{CONFIG_NAME}"):
        try:
            used.add(json.loads(config.read_text())["annotations"]["org.minirun.image"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return frozenset(used)
