"""How much of an image's layers is wasted: bytes that later layers overwrite or remove.

The seed talk compares images with dive's efficiency score. minirun's score is defined on its
own: ``efficiency = bytes that reach the final rootfs / bytes in all layers``, counting regular
file contents only. A file that a later layer overwrites, or whites out (directly, through a
removed directory, or through an opaque directory), is wasted in the layer that carried it.
It reads the layer streams only (verified as usual); nothing is written.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from .source import Image, LayerStream
from .unpack import OPAQUE_MARKER, WHITEOUT_PREFIX, read_members, split_name


@dataclass(frozen=True)
class LayerEfficiency:
    index: int
    diff_id: str
    size: int
    wasted: int
    files: int


@dataclass(frozen=True)
class Report:
    layers: tuple[LayerEfficiency, ...]
    size: int
    wasted: int

    @property
    def score(self) -> float:
        return 1.0 if not self.size else (self.size - self.wasted) / self.size


def efficiency(image: Image) -> Report:
    # path -> (layer index, size, is a directory) of what is on top so far
    final: dict[str, tuple[int, int, bool]] = {}
    sizes = [0] * len(image.layers)
    wasted = [0] * len(image.layers)
    files = [0] * len(image.layers)

    def drop(path: str, below: int) -> None:
        """What layers under ``below`` put at ``path`` (and beneath it) no longer shows."""
        top = final.get(path)
        hit = [path] if top else []
        if top is None or top[2]:  # scan for children only below a (possible) directory
            prefix = path + "/" if path else ""
            hit += [p for p in final if p.startswith(prefix) and p != path]
        for key in hit:
            owner, size, _ = final[key]
            if owner < below:
                wasted[owner] += size
                del final[key]

    for layer in image.layers:
        index = layer.index
        with LayerStream(image, layer) as stream:
            for _tar, member in read_members(stream.tar, layer.what):
                parts = split_name(member.name, layer.what)
                base = parts[-1] if parts else ""
                if base == OPAQUE_MARKER:
                    parent = "/".join(parts[:-1])
                    for key in [k for k in final if k.startswith(parent + "/" if parent else "")]:
                        if key != parent:
                            drop(key, index)
                elif base.startswith(WHITEOUT_PREFIX):
                    drop("/".join([*parts[:-1], base.removeprefix(WHITEOUT_PREFIX)]), index)
                elif parts:
                    _place(final, drop, "/".join(parts), index, member)
                    size = member.size if member.isreg() else 0
                    sizes[index] += size
                    files[index] += 1 if member.isreg() else 0
            stream.finish()
    reports = tuple(LayerEfficiency(layer.index, str(layer.diff_id), sizes[layer.index],
                                    wasted[layer.index], files[layer.index])
                    for layer in image.layers)
    return Report(reports, sum(sizes), sum(wasted))


def _place(final: dict[str, tuple[int, int, bool]], drop: Callable[[str, int], None],
           path: str, index: int, member: tarfile.TarInfo) -> None:
    top = final.get(path)
    if top is not None:
        if member.isdir() and top[2]:
            return  # a directory entry over a directory merges with it
        # The same path again (this or a lower layer): the older one is wasted; a directory
        # replaced by anything else takes its whole tree with it.
        drop(path, index + 1)
    final[path] = (index, member.size if member.isreg() else 0, member.isdir())
