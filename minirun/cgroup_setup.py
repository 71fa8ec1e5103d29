"""Deciding whether the container gets a cgroup, and wiring the cgroup manager in.

On a host without usable cgroup v2 controllers (cgroup v1 or hybrid mode), a config that asks
for no limits runs without a cgroup after one warning; one that asks for limits, or the
``cgroups`` stage itself, is refused with the reason and the remedy.
"""

from __future__ import annotations

import os

from minirun.errors import UnsupportedError
from minirun.log import get as get_logger
from minirun.runtime import Hooks
from minirun.spec import Spec
from minirun.stages import Stage

TYPE_CHECKING = False  # typing itself costs start-up time; mypy still reads this
if TYPE_CHECKING:
    pass

log = get_logger(__name__)


# Enabled for every container cgroup, limits or not, so its usage can be read.
ACCOUNTING = frozenset({"cpu", "memory", "pids", "io"})


def hooks_for(spec: Spec, stage: Stage, container_id: str) -> Hooks:
    if not stage.has(Stage.CGROUPS):
        return Hooks()
    if os.environ.get("MINIRUN_CGROUP_MANAGER") == "disabled":
        if spec.asks_for_limits():
            raise UnsupportedError(f"{spec.file}: linux.resources: limits need a cgroup, and "
                                   "--cgroup-manager=disabled asks for none")
        return Hooks()
    limits = spec.asks_for_limits()
    if not limits and stage is not Stage.CGROUPS and not os.path.exists(
            "/sys/fs/cgroup/cgroup.controllers"):
        # The common case on a v1 or hybrid host, decided without the cgroup module's
        # import and mount-table probe (both measurable in start-up time).
        log.warning("no cgroup for this container (it asks for no limits): /sys/fs/cgroup is "
                    "not a cgroup v2 mount (cgroup v1 or hybrid mode)")
        return Hooks()
    from minirun.isolation import cgroups

    host = cgroups.probe()
    files = cgroups.resources_to_files(spec.resources, spec.file)
    usable = host.mode is cgroups.CgroupMode.UNIFIED
    if stage is Stage.CGROUPS or limits:
        cgroups.require(host, cgroups.controllers_needed(files))
    elif not usable:
        log.warning("no cgroup for this container (it asks for no limits): %s",
                    host.describe())
        return Hooks()
    return _manager_hooks(spec, container_id, files)


def _manager_hooks(spec: Spec, container_id: str, files: dict[str, str]) -> Hooks:
    from minirun.isolation import cgroups

    manager = cgroups.CgroupManager.for_container(cgroups.CGROUP_ROOT, spec.cgroups_path,
                                                  container_id, spec.file)
    state: dict[str, int] = {}

    def place(pid: int) -> None:
        # The guard first: from the first mkdir on, a killed minirun leaves nothing behind.
        state["guard"] = cgroups.guard(manager)
        manager.create(files, also=ACCOUNTING)
        manager.add(pid)

    def cleanup() -> None:
        manager.destroy()
        disarm()

    def disarm() -> None:
        if "guard" in state:
            cgroups.disarm(state.pop("guard"))

    return Hooks(place=place, cgroup=str(manager.path), cleanup=cleanup, disarm=disarm,
                 oom_killed=manager.oom_killed)
