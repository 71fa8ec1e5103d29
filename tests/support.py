"""What test modules import: paths of this checkout and the minirun command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MINIRUN = REPO / "bin" / "minirun"
for entry in (REPO, REPO / "rootfs-fetch"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

BUSYBOX = Path("/bin/busybox")


def minirun(*args: str, check: bool = False, timeout: float = 60, cwd: str | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run bin/minirun of this checkout and capture what it prints."""
    result = subprocess.run([str(MINIRUN), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=cwd, input=input if input is not None else "",
                            env={**os.environ, "MINIRUN_LOG": os.environ.get("MINIRUN_LOG",
                                                                             "warning")})
    if check and result.returncode != 0:
        raise AssertionError(f"minirun {' '.join(args)} failed with {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def make_rootfs(dest: Path) -> Path:
    subprocess.run([str(REPO / "rootfs-fetch" / "busybox-rootfs.sh"), str(dest)], check=True,
                   capture_output=True)
    return dest


def only_line(stderr: str) -> str:
    """The single line minirun printed for an error (a hint line may follow)."""
    lines = [line for line in stderr.splitlines() if not line.startswith("minirun: hint:")]
    assert len(lines) == 1, stderr
    return lines[0]


def detached(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """minirun create / run -d / exec -d: the container keeps the descriptors it got, so its
    output goes to files (as conmon's would), not to pipes a test would wait on for ever."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run([str(MINIRUN), *args], stdin=subprocess.DEVNULL, stdout=out,
                              stderr=err, timeout=60).returncode
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(list(args), code, out.read(), err.read())
    if check and code != 0:
        raise AssertionError(f"minirun {' '.join(args)}: {code}\n{result.stderr}")
    return result
