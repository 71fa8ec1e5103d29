"""The historical stages, each a mode that switches on what history had by then."""

from __future__ import annotations

import enum


class Stage(enum.Enum):
    # value: (order, year, one line of what it adds)
    CHROOT = (0, 1979, "chroot(2) into the rootfs, nothing else")
    JAIL = (1, 2001, "mount namespace + pivot_root, own hostname, own network namespace")
    CGROUPS = (2, 2006, "cgroup v2 limits on memory, pids, cpu and io")
    NAMESPACES = (3, 2008, "pid, ipc, cgroup and user namespaces, a fresh /proc, "
                           "dropped capabilities")
    IMAGE = (4, 2013, "a root file system assembled from image layers with overlayfs")
    OCI = (5, 2015, "the full runtime-spec")

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def year(self) -> int:
        return self.value[1]

    @property
    def summary(self) -> str:
        return self.value[2]

    def has(self, other: Stage) -> bool:
        """Whether this stage includes what ``other`` introduced (stages are cumulative)."""
        return self.value[0] >= other.value[0]

    @classmethod
    def parse(cls, name: str) -> Stage:
        return cls[name.upper()]


def names() -> list[str]:
    return [stage.label for stage in Stage]
