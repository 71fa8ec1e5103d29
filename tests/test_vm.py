"""Host side of the cgroup v2 VM tests.

One VM per session runs ``/usr/bin/python3 -m pytest tests/vm_guest`` inside (see
tests/vm_guest/conftest.py) and writes a JUnit XML file to a read-write share; each guest
test becomes one host test here, ``test_in_vm[FILE::TEST]``, passing, failing (with the
guest's failure text) or skipping as it did in the guest. The guest test ids are listed
on the host at import time with ``pytest --collect-only`` and MINIRUN_IN_VM=1.

Outside CI, a VM that cannot be built or booted skips these tests with the reason; in CI
(CI=true) that, or a guest test without a result, is a failure. Two more tests check the
harness itself: exit status, output and share round trip, and the kill on timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.vm import VmBuildError, VmError, VmTimeout, run  # noqa: E402

GUEST_DIR = "tests/vm_guest"
# --confcutdir: the guest loads no conftest.py above tests/vm_guest (host-only fixtures).
GUEST_PYTEST = ["/usr/bin/python3", "-m", "pytest", "-p", "no:cacheprovider",
                f"--confcutdir={GUEST_DIR}", f"--rootdir={REPO}"]
IN_CI = os.environ.get("CI") == "true"
GUEST_TIMEOUT = float(os.environ.get("MINIRUN_VM_TIMEOUT", "900"))
QEMU = "qemu-system-x86_64"

pytestmark = pytest.mark.vm


def _collect_guest_ids() -> tuple[list[str], str]:
    """The guest tests' node ids, and what went wrong listing them ("" when nothing)."""
    done = subprocess.run(
        [*GUEST_PYTEST, "--collect-only", "-q", GUEST_DIR], cwd=REPO,
        env={**os.environ, "MINIRUN_IN_VM": "1"}, capture_output=True, text=True,
        timeout=300, check=False,
    )
    ids = [line.strip() for line in done.stdout.splitlines() if "::" in line]
    if done.returncode not in (0, 5):
        return ids, f"listing the guest tests failed ({done.returncode}): {done.stdout[-3000:]}"
    return ids, ""


GUEST_IDS, COLLECT_PROBLEM = _collect_guest_ids()


@dataclass(frozen=True)
class GuestOutcome:
    kind: str  # passed, failed or skipped
    text: str


@dataclass
class GuestRun:
    outcomes: dict[str, GuestOutcome] = field(default_factory=dict)
    problem: str = ""
    output: str = ""


def _junit_key(node_id: str) -> str:
    """pytest's JUnit names: classname is the module path dotted, plus any classes."""
    path, *inner = node_id.split("::")
    return ".".join([path.removesuffix(".py").replace("/", "."), *inner[:-1]]) + "::" + inner[-1]


def _read_junit(xml: Path) -> dict[str, GuestOutcome]:
    outcomes = {}
    for case in ElementTree.parse(xml).iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        bad = [child for child in case if child.tag in ("failure", "error")]
        skipped = case.find("skipped")
        if bad:
            texts = [f"{child.get('message', '')}\n{child.text or ''}" for child in bad]
            outcomes[key] = GuestOutcome("failed", "\n".join(texts))
        elif skipped is not None:
            outcomes[key] = GuestOutcome("skipped", skipped.get("message", ""))
        else:
            outcomes[key] = GuestOutcome("passed", "")
    return outcomes


def _boot_guest_tests(selected: list[str]) -> GuestRun:
    if shutil.which(QEMU) is None:
        return GuestRun(problem=f"{QEMU} is not installed (setup/apt-packages.txt)")
    share = Path(tempfile.mkdtemp(prefix="minirun-vm-share-"))
    try:
        xml = share / "guest.xml"
        # Only the guest tests selected on the host (-k, node ids) run in the guest.
        targets = [GUEST_DIR] if set(selected) >= set(GUEST_IDS) else selected
        command = [*GUEST_PYTEST, "-q", f"--junitxml={xml}", *targets]
        result = run(command, share, GUEST_TIMEOUT, "1G", cwd=REPO)
        print(f"guest pytest: exit {result.status} after {result.seconds:.1f} s in the VM")
        if not xml.exists():
            return GuestRun(problem=f"the guest wrote no {xml.name} (exit {result.status}): "
                            f"{result.output[-3000:]}", output=result.output)
        return GuestRun(_read_junit(xml), output=result.output)
    except (VmError, VmBuildError) as error:
        return GuestRun(problem=f"{error}" + (f" ({error.hint})" if error.hint else ""))
    finally:
        shutil.rmtree(share)


@pytest.fixture(scope="session")
def guest_run(request: pytest.FixtureRequest) -> Iterator[GuestRun]:
    selected = [str(item.callspec.params["guest_id"]) for item in request.session.items
                if isinstance(item, pytest.Function) and item.originalname == "test_in_vm"]
    yield _boot_guest_tests(selected)


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _short(node_id: str) -> str:
    return node_id.removeprefix(f"{GUEST_DIR}/")


@pytest.mark.parametrize("guest_id", GUEST_IDS or ["(none)"], ids=_short)
def test_in_vm(guest_id: str, guest_run: GuestRun) -> None:
    if COLLECT_PROBLEM or not GUEST_IDS:
        pytest.fail(COLLECT_PROBLEM or f"no tests found in {GUEST_DIR}", pytrace=False)
    if guest_run.problem:
        _unavailable(f"VM: {guest_run.problem}")
    outcome = guest_run.outcomes.get(_junit_key(guest_id))
    if outcome is None:
        _unavailable(f"the guest reported no result for {guest_id}; its output ends:\n"
                     f"{guest_run.output[-3000:]}")
    elif outcome.kind == "failed":
        pytest.fail(f"in the VM: {outcome.text}", pytrace=False)
    elif outcome.kind == "skipped":
        pytest.skip(f"in the VM: {outcome.text}")


def _gone(pid: int) -> bool:
    """The process is gone (or the pid was reused by something that is not qemu)."""
    try:
        return b"qemu" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return True


@pytest.fixture()
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """run() makes its job directory here, so the test can see that it is removed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_run_passes_status_output_and_share(
    private_tmp: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if shutil.which(QEMU) is None:
        _unavailable(f"{QEMU} is not installed")
    share = tmp_path_factory.mktemp("share")
    script = ('echo "out $MINIRUN_IN_VM $(pwd) $(command -v python3)"; echo err >&2; '
              'cat /sys/fs/cgroup/cgroup.controllers; echo guest > "$1/from-guest"; exit 3')

    result = run(["sh", "-c", script, "sh", str(share)], share, 120, "256M", cwd=REPO)

    lines = result.output.splitlines()
    assert result.status == 3, result.output
    assert lines[:2] == [f"out 1 {REPO} /usr/bin/python3", "err"]
    assert {"cpu", "memory", "pids", "io"} <= set(lines[2].split())
    assert (share / "from-guest").read_text() == "guest\n"
    assert "reboot: Power down" in result.console_log.read_text()
    assert _gone(result.qemu_pid)
    assert list(private_tmp.iterdir()) == []


def test_run_kills_qemu_on_timeout(private_tmp: Path) -> None:
    if shutil.which(QEMU) is None:
        _unavailable(f"{QEMU} is not installed")

    with pytest.raises(VmTimeout) as raised:
        run(["sleep", "600"], None, 8, "256M")

    assert raised.value.qemu_pid > 0 and _gone(raised.value.qemu_pid)
    assert list(private_tmp.iterdir()) == []


def _qemu_child(parent: int) -> int:
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if entry.name.isdigit() and int(fields[1]) == parent and not _gone(int(entry.name)):
            return int(entry.name)
    return 0


def test_qemu_dies_with_a_killed_caller(tmp_path: Path) -> None:
    """SIGKILL of the process that called run() leaves no VM running (PR_SET_PDEATHSIG)."""
    if shutil.which(QEMU) is None:
        _unavailable(f"{QEMU} is not installed")
    caller = subprocess.Popen(
        ["/usr/bin/python3", "-c",
         "from tests.vm import run; run(['sleep', '600'], None, 300, '256M')"],
        cwd=REPO, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        qemu = 0
        deadline = time.monotonic() + 60
        while not qemu and time.monotonic() < deadline and caller.poll() is None:
            time.sleep(0.2)
            qemu = _qemu_child(caller.pid)
        assert qemu, "the caller started no qemu"
    finally:
        caller.kill()
        caller.wait()

    deadline = time.monotonic() + 10
    while not _gone(qemu) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(qemu), f"qemu {qemu} outlived its killed caller"
