"""How much of an image's layers is wasted: bytes that later layers overwrite or remove.

The seed talk compares images with dive's efficiency score. minirun's score is defined on its
own: ``efficiency = bytes that reach the final rootfs / bytes in all layers``, counting regular
file contents only. A file that a later layer overwrites, or whites out (directly, through a
removed directory, or through an opaque directory), is wasted in the layer that carried it.
It reads the layer streams only (verified as usual); nothing is written.
"""

from __future__ import annotations

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
    final: dict[str, tuple[int, int]] = {}  # path -> (layer index, size) of what is on top
    sizes = [0] * len(image.layers)
    wasted = [0] * len(image.layers)
    files = [0] * len(image.layers)

    def drop(path: str, below: int, subtree: bool) -> None:
        hit = [p for p in final if (p == path and not subtree) or p.startswith(path + "/")]
        for key in hit:
            owner, size = final[key]
            if owner < below:
                wasted[owner] += size
                del final[key]

    for layer in image.layers:
        index = layer.index
        with LayerStream(image, layer) as stream:
            for _tar, member in read_members(stream.tar, layer.what):
                parts = split_name(member.name, layer.what)
                if not parts:
                    continue
                parent, base = "/".join(parts[:-1]), parts[-1]
                if base == OPAQUE_MARKER:
                    drop(parent, index, subtree=True)
                    continue
                if base.startswith(WHITEOUT_PREFIX):
                    target = "/".join([*parts[:-1], base.removeprefix(WHITEOUT_PREFIX)])
                    drop(target, index, subtree=False)
                    drop(target, index, subtree=True)
                    continue
                path = "/".join(parts)
                drop(path, index + 1, subtree=False)
                if not member.isdir():  # a file replacing a directory removes its tree
                    drop(path, index, subtree=True)
                size = member.size if member.isreg() else 0
                final[path] = (index, size)
                sizes[index] += size
                files[index] += 1 if member.isreg() else 0
            stream.finish()
    reports = tuple(LayerEfficiency(layer.index, str(layer.diff_id), sizes[layer.index],
                                    wasted[layer.index], files[layer.index])
                    for layer in image.layers)
    return Report(reports, sum(sizes), sum(wasted))
