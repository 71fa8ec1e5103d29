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

LOCK = ".running"


@dataclass
class ImageContainer:
    spec: Spec
    overlay: Overlay
    bundle: Path
    image_id: str
    lock_fd: int = -1  # flock-ed while this minirun lives: a bundle without it is stale

    def remove(self) -> None:
        shutil.rmtree(self.bundle, ignore_errors=True)
        if self.lock_fd >= 0:
            os.close(self.lock_fd)


def _claim(bundle: Path) -> int | None:
    """Lock ``bundle``'s marker; None if another live minirun holds it. The kernel drops the
    lock when its holder dies, however it dies, so a leftover bundle is told apart."""
    import fcntl

    fd = os.open(bundle / LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _alive(bundle: Path) -> bool:
    if not (bundle / LOCK).exists():
        return True  # being made right now
    fd = _claim(bundle)
    if fd is None:
        return True
    os.close(fd)
    return False


def prepare(reference: str, store: Path, container_id: str) -> ImageContainer:
    from rootfs_fetch import store as content_store

    bundle = store / "containers" / container_id
    if bundle.exists():
        if _alive(bundle):
            raise ConfigError(str(bundle), "", f"a container named {container_id!r} exists "
                                               "already (choose another id)")
        shutil.rmtree(bundle)  # left by a minirun that was killed
    from rootfs_fetch.progress import LayerProgress

    with LayerProgress():
        prepared = content_store.prepare(reference, store)
    (bundle / "rootfs").mkdir(parents=True, mode=0o755)
    lock_fd = _claim(bundle)
    try:
        if lock_fd is None:
            raise ConfigError(str(bundle), "", f"a container named {container_id!r} is being "
                                               "made by another minirun")
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
    return ImageContainer(spec, layers, bundle, prepared.image_id, lock_fd)


def images_in_use(store: Path) -> frozenset[str]:
    """Image ids of the containers that run now (their minirun holds their bundle's lock)."""
    used = set()
    for config in (store / "containers").glob(f"*/{CONFIG_NAME}"):
        if not _alive(config.parent):
            continue
        try:
            used.add(json.loads(config.read_text())["annotations"]["org.minirun.image"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return frozenset(used)
