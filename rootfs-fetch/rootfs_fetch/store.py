"""The content store of the image stage: each layer unpacked once, shared by every image.

Layout under ``store`` (default /var/lib/minirun)::

    layers/sha256-<hex>/     one layer, unpacked alone (overlayfs whiteouts), keyed by diff_id
    images/<hex>.json        one image: its references, layer diff_ids and sizes, its config
    tmp/                     layers being unpacked; renamed into layers/ only once verified
    lock                     flock(2) held by prepare() and rmi() so they do not interleave

A layer is unpacked into tmp/ and renamed into place with rename(2), which is atomic: a
directory under layers/ is always complete. A second prepare() of the same image unpacks
nothing. The overlay itself is mounted by the runtime, in the container's mount namespace,
with ``lowerdir=`` set to :attr:`Prepared.lowerdirs` joined by ``:``.

Not yet: mount(2) takes at most one page of options, so ``lowerdir=`` with this store's
paths (about 90 bytes each) fits about 45 layers; more need fsconfig(2)'s ``lowerdir+``
(Linux 6.8) one layer at a time. Remove this note when the runtime mounts that way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minirun.errors import MiniRunError

from .convert import base_config, convert
from .digest import Digest
from .source import Image, Layer, Platform, open_image, verify_layer
from .unpack import Mode, Options, unpack_layer

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("/var/lib/minirun")


class StoreError(MiniRunError):
    """The store is missing an image, or an image is still in use."""


@dataclass(frozen=True)
class Prepared:
    config: dict[str, Any]  # the converted config.json
    lowerdirs: list[Path]  # top-most first, as overlayfs lowerdir= wants them
    image_id: str  # the config digest, like "sha256:..."
    unpacked: int = 0  # layers this call had to unpack (0 when all were in the store)


@dataclass(frozen=True)
class ImageInfo:
    id: str
    reference: str
    layers: tuple[str, ...]  # diff_ids, bottom-most first
    size: int  # uncompressed bytes of all its layers


def layer_dir(store: Path, diff_id: Digest) -> Path:
    return store / "layers" / f"{diff_id.algorithm}-{diff_id.encoded}"


@contextlib.contextmanager
def locked(store: Path) -> Iterator[None]:
    for sub in ("layers", "images", "tmp"):
        (store / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(store / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        # Whoever wrote into tmp/ held this lock and is gone: what is left is from a crash.
        for leftover in (store / "tmp").iterdir():
            log.debug("removing %s left by an interrupted run", leftover)
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        yield


def prepare(image_ref: str, store: Path = DEFAULT_STORE, platform: Platform | None = None,
            options: Options | None = None, base: dict[str, Any] | None = None) -> Prepared:
    """Make sure every layer of IMAGE is in the store; return the converted config and the
    lowerdirs for the overlay."""
    options = options or Options()
    with locked(store), open_image(image_ref, platform) as image:
        unpacked = 0
        sizes = []
        for layer in image.layers:
            dest = layer_dir(store, layer.diff_id)
            if not dest.is_dir():
                _unpack_into_store(image, layer, dest, store, options)
                unpacked += 1
            sizes.append(_layer_size(dest))
        _record(store, image, sizes)
    lowerdirs = [layer_dir(store, layer.diff_id) for layer in reversed(image.layers)]
    config = convert(image.config, base or base_config(), lowerdirs, where=image_ref)
    log.info("%s: %d layers, %d unpacked now", image_ref, len(lowerdirs), unpacked)
    return Prepared(config, lowerdirs, image.image_id, unpacked)


def _unpack_into_store(image: Image, layer: Layer, dest: Path, store: Path,
                       options: Options) -> None:
    # Checked before anything is written, then unpacked (and checked again) in tmp/.
    size = verify_layer(image, layer)
    tmp = Path(tempfile.mkdtemp(prefix="layer-", dir=store / "tmp"))
    try:
        os.chmod(tmp, 0o755)
        log.info("unpacking %s into the store", layer.what)
        unpack_layer(image, layer, tmp, Mode.OVERLAY, options)
        (tmp.parent / f"{tmp.name}.size").write_text(str(size))
        try:
            os.rename(tmp, dest)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            log.debug("%s appeared meanwhile; keeping that one", dest)
            return
        os.rename(tmp.parent / f"{tmp.name}.size", dest.parent / f"{dest.name}.size")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp.parent / f"{tmp.name}.size").unlink(missing_ok=True)


def _layer_size(dest: Path) -> int:
    try:
        return int((dest.parent / f"{dest.name}.size").read_text())
    except (OSError, ValueError):
        return 0


def _record(store: Path, image: Image, sizes: list[int]) -> None:
    path = store / "images" / f"{image.config_digest.encoded}.json"
    references: list[str] = []
    with contextlib.suppress(OSError, ValueError):
        references = json.loads(path.read_text()).get("references", [])
    if image.reference not in references:
        references.append(image.reference)
    record = {
        "id": image.image_id, "references": references,
        "layers": [str(layer.diff_id) for layer in image.layers],
        "size": sum(sizes), "created": int(time.time()), "config": image.config,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.rename(tmp, path)


def _records(store: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted((store / "images").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable image record skipped: %s", path, exc)
    return records


def images(store: Path = DEFAULT_STORE) -> list[ImageInfo]:
    if not (store / "images").is_dir():
        return []
    return [ImageInfo(str(r["id"]), ", ".join(r.get("references", [])),
                      tuple(r.get("layers", [])), int(r.get("size", 0)))
            for r in _records(store)]


def find_image(store: Path, image_id: str) -> ImageInfo:
    """An image by full id, bare hex, unique prefix or reference."""
    wanted = image_id.removeprefix("sha256:")
    matches = [i for i in images(store) if i.id.removeprefix("sha256:").startswith(wanted)
               or image_id in i.reference.split(", ")]
    if len(matches) != 1:
        problem = "no image" if not matches else f"{len(matches)} images"
        raise StoreError(f"{store}: {problem} match {image_id!r}", "see `minirun images`")
    return matches[0]


def rmi(store: Path, image_id: str, in_use: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Forget an image and remove the layers no other image uses; returns removed diff_ids."""
    with locked(store):
        image = find_image(store, image_id)
        if image.id in in_use:
            raise StoreError(f"image {image.id} is used by a container", "delete it first")
        (store / "images" / f"{image.id.removeprefix('sha256:')}.json").unlink()
        still_used = {d for other in images(store) for d in other.layers}
        removed = []
        for diff_id in image.layers:
            if diff_id in still_used:
                continue
            algorithm, _, encoded = diff_id.partition(":")
            dest = store / "layers" / f"{algorithm}-{encoded}"
            if dest.is_dir():
                # Renamed away first, so layers/ never holds a half-removed layer.
                doomed = Path(tempfile.mkdtemp(prefix="rm-", dir=store / "tmp"))
                os.rename(dest, doomed / "layer")
                shutil.rmtree(doomed)
            (dest.parent / f"{dest.name}.size").unlink(missing_ok=True)
            removed.append(diff_id)
    return removed
