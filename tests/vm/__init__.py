"""The throw-away cgroup v2 test VM: build its kernel and initramfs, run commands in it.

From Python::

    from tests.vm import run
    result = run(["cat", "/sys/fs/cgroup/cgroup.controllers"], share=None, timeout=120)
    result.status, result.output, result.console_log

From a shell, in the checkout's top directory::

    /usr/bin/python3 -m tests.vm build
    /usr/bin/python3 -m tests.vm run -- minirun run ... --stage cgroups
"""

from .build import VmBuildError, VmImage, cache_dir, ensure_built
from .machine import VmError, VmResult, VmTimeout, run

__all__ = [
    "VmBuildError", "VmError", "VmImage", "VmResult", "VmTimeout", "cache_dir",
    "ensure_built", "run",
]
