"""The labs in stages/*/README.md, run: what a lab shows as expected output is what minirun
prints, so the labs and the code cannot drift.

A lab marks the commands it checks in fenced blocks whose info string is ``lab-check``:

    ```lab-check
    $ minirun run --stage chroot demo
    minirun: stage chroot leaves out mounts: applied from stage jail (2001)
    ...
    ESCAPED: /etc/debian_version exists
    ```

- ``$ COMMAND`` is run by ``sh -c`` in a scratch directory that holds ``demo``, a copy of a
  busybox bundle (what setup.sh builds in /var/lib/minirun/demo). Lines that start with ``> ``
  continue the command (a here-document, say). Commands of one lab share the directory, in
  the order the lab lists them; shell variables do not carry over. ``$REPO`` is the checkout.
- The lines after a command are its expected output (stdout and stderr together): each must
  appear, in order, with nothing between them unless a line ``...`` stands there (any lines,
  none too). Inside a line, ``...`` stands for any text; runs of spaces match any run.
- Every command must exit 0: a step that fails on purpose says so with ``; echo "exit $?"``.
- ``lab-check vm`` marks a block that needs cgroup v2, podman or containerd. This host has
  hybrid cgroups, so those blocks are skipped here with the reason. The cgroups lab runs
  whole in the throw-away cgroup v2 VM (test_vm_blocks_run_in_the_test_vm); the oci lab's
  podman and containerd blocks are not run as written anywhere: the podman and containerd
  tests in tests/vm_guest drive minirun the same way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import REPO, minirun

LABS = ("chroot", "jail", "cgroups", "namespaces", "image", "oci")
YEARS = {"chroot": 1979, "jail": 2001, "cgroups": 2006, "namespaces": 2008, "image": 2013,
         "oci": 2015}
FENCE = "```"
ANY_LINES = "..."
COMMAND_TIMEOUT = 60.0


@dataclass(frozen=True)
class Command:
    text: str
    expected: tuple[str, ...]
    line: int  # where the command starts in the README, for failure messages


@dataclass(frozen=True)
class Block:
    lab: str
    line: int
    vm: bool
    commands: tuple[Command, ...]


def readme(lab: str) -> Path:
    return REPO / "stages" / lab / "README.md"


def parse(lab: str, text: str) -> list[Block]:
    """The ``lab-check`` blocks of one README, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        info = lines[index].strip()
        index += 1
        if not info.startswith(FENCE + "lab-check"):
            continue
        words = info[len(FENCE):].split()
        if words not in (["lab-check"], ["lab-check", "vm"]):
            raise ValueError(f"{lab}/README.md:{index}: unknown lab-check block {info!r}")
        start = index
        body: list[tuple[int, str]] = []
        while index < len(lines) and lines[index].strip() != FENCE:
            body.append((index + 1, lines[index]))
            index += 1
        if index == len(lines):
            raise ValueError(f"{lab}/README.md:{start}: lab-check block is not closed")
        index += 1
        blocks.append(Block(lab, start, words == ["lab-check", "vm"], _commands(lab, body)))
    return blocks


def _commands(lab: str, body: list[tuple[int, str]]) -> tuple[Command, ...]:
    commands: list[Command] = []
    text: list[str] = []
    expected: list[str] = []
    start = 0
    for number, line in body:
        if line.startswith("$ "):
            if text:
                commands.append(Command("\n".join(text), tuple(expected), start))
            text, expected, start = [line[2:]], [], number
        elif line.startswith("> ") and text and not expected:
            text.append(line[2:])
        elif not text:
            raise ValueError(f"{lab}/README.md:{number}: output before any '$ ' command")
        else:
            expected.append(line.rstrip())
    if text:
        commands.append(Command("\n".join(text), tuple(expected), start))
    return tuple(commands)


def _line_pattern(expected: str) -> re.Pattern[str]:
    parts = [r"\s+".join(re.escape(word) for word in piece.split())
             for piece in expected.strip().split(ANY_LINES)]
    return re.compile(r"\s*" + ".*".join(parts) + r"\s*")


def matches(expected: tuple[str, ...], output: list[str]) -> bool:
    """Whether ``output`` holds the ``expected`` lines in order (``...`` lines skip any)."""
    groups: list[list[str]] = [[]]
    for line in expected:
        if line.strip() == ANY_LINES:
            groups.append([])
        else:
            groups[-1].append(line)
    anchored_start = bool(groups[0])
    position = 0
    for number, group in enumerate(groups):
        if not group:
            continue
        patterns = [_line_pattern(line) for line in group]
        last = len(output) - len(patterns)
        candidates = [position] if number == 0 and anchored_start else range(position,
                                                                              last + 1)
        for begin in candidates:
            if begin <= last and all(p.fullmatch(output[begin + k])
                                     for k, p in enumerate(patterns)):
                position = begin + len(patterns)
                break
        else:
            return False
    return True


def _environment(bin_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MINIRUN_")}
    env["PATH"] = f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["REPO"] = str(REPO)
    return env


def run_command(lab: str, command: Command, work: Path, env: dict[str, str]) -> str:
    # Output goes to a file, not a pipe: `minirun create` leaves a container that holds the
    # caller's stdout open (as runc's does), and a pipe would wait for it to end.
    with (work / ".lab-output").open("w+") as output:
        done = subprocess.run(["sh", "-c", command.text], cwd=work, env=env,
                              stdin=subprocess.DEVNULL, stdout=output,
                              stderr=subprocess.STDOUT, timeout=COMMAND_TIMEOUT)
        output.seek(0)
        text = output.read()
    where = f"stages/{lab}/README.md:{command.line}"
    assert done.returncode == 0, f"{where}: exit {done.returncode}: $ {command.text}\n{text}"
    return text


def _all_blocks() -> list[Block]:
    return [block for lab in LABS if readme(lab).is_file()
            for block in parse(lab, readme(lab).read_text())]


# Tests of the checker itself: a checker that cannot fail would prove nothing.

def test_matcher_needs_the_lines_in_order_and_adjacent_without_dots() -> None:
    output = ["a 1", "b    2", "c 3"]
    assert matches(("a 1", "b 2"), output)
    assert matches(("...", "c 3"), output)
    assert matches(("a ...", "...", "c 3"), output)
    assert not matches(("a 1", "c 3"), output)
    assert not matches(("b 2",), output)  # no leading "...": the output starts with it
    assert not matches(("c 3", "...", "a 1"), output)
    assert not matches(("a 1", "b 2", "c 3", "d 4"), output)


def test_parser_reads_commands_continuations_and_output() -> None:
    text = ("x\n```lab-check\n$ echo a\na\n...\n$ cat <<EOF\n> b\n> EOF\nb\n```\n"
            "```lab-check vm\n$ true\n```\n")
    first, second = parse("t", text)
    assert [c.text for c in first.commands] == ["echo a", "cat <<EOF\nb\nEOF"]
    assert first.commands[0].expected == ("a", "...") and not first.vm
    assert first.commands[1].line == 6
    assert second.vm and second.commands[0].expected == ()
    with pytest.raises(ValueError, match="unknown lab-check"):
        parse("t", "```lab-check host\n```\n")


@pytest.mark.parametrize("lab", LABS)
def test_lab_readme_is_complete(lab: str) -> None:
    text = readme(lab).read_text()
    assert str(YEARS[lab]) in text.splitlines()[0], "the title names the year"
    assert "Exercise" in text, "exercises are marked as exercises"
    assert "man " in text or "(2)" in text or "(7)" in text, "man pages are named"
    blocks = parse(lab, text)
    assert blocks, "no lab-check block"
    assert all(block.commands for block in blocks), "an empty lab-check block"
    assert any(c.expected for block in blocks for c in block.commands), "nothing expected"


# The labs, run. Needs root: every lab runs containers.

@pytest.mark.root
@pytest.mark.parametrize("lab", LABS)
def test_lab_runs_as_written(lab: str, make_bundle: Callable[..., Path],
                             tmp_path: Path) -> None:
    blocks = [block for block in parse(lab, readme(lab).read_text()) if not block.vm]
    bundle = make_bundle(["sh"], name="demo")
    bin_dir = tmp_path / "path"
    bin_dir.mkdir()
    (bin_dir / "minirun").symlink_to(REPO / "bin" / "minirun")
    env = _environment(bin_dir)
    started = time.monotonic()
    try:
        for block in blocks:
            for command in block.commands:
                output = run_command(lab, command, bundle.parent, env)
                lines = output.splitlines()
                report = (f"stages/{lab}/README.md:{command.line}: $ {command.text}\n"
                          "expected:\n  " + "\n  ".join(command.expected) + "\ngot:\n  "
                          + "\n  ".join(lines))
                assert matches(command.expected, lines), report
    finally:
        _delete_containers_under(bundle.parent)
    assert time.monotonic() - started < 30, "a lab should check in seconds"


def _delete_containers_under(work: Path) -> None:
    """A lab that failed half-way may leave a created or running container (lab 6 creates
    one): delete, by force, every container whose bundle lies in the scratch directory."""
    listing = minirun("list", "--format", "json", check=True).stdout
    for container in json.loads(listing or "[]"):
        if Path(container.get("bundle", "/")).is_relative_to(work):
            minirun("delete", "--force", container["id"], check=True)


@pytest.mark.parametrize("block", [pytest.param(b, id=f"{b.lab}:{b.line}")
                                   for b in _all_blocks() if b.vm])
def test_vm_block_is_left_to_the_vm(block: Block) -> None:
    where = ("test_vm_blocks_run_in_the_test_vm" if block.lab in VM_LABS
             else "the podman and containerd VM tests")
    pytest.skip(f"stages/{block.lab}/README.md:{block.line}: lab-check vm (needs cgroup v2, "
                f"podman or containerd; this host has hybrid cgroups); covered by {where}")


# Labs whose vm blocks need only cgroup v2, so the throw-away test VM (tests/vm) can run them.
# The oci lab's podman and containerd blocks need a network and containerd's service, which
# that VM does not have.
VM_LABS = ("cgroups",)


@pytest.mark.root
@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.parametrize("lab", VM_LABS)
def test_vm_blocks_run_in_the_test_vm(lab: str, make_bundle: Callable[..., Path],
                                      tmp_path: Path) -> None:
    """Every block of the lab (host and vm, in order) in one boot of the cgroup v2 VM."""
    from tests.vm import run

    commands = [c for block in parse(lab, readme(lab).read_text()) for c in block.commands]
    bundle = make_bundle(["sh"], name="demo")
    work = bundle.parent
    bin_dir = tmp_path / "path"
    bin_dir.mkdir()
    (bin_dir / "minirun").symlink_to(REPO / "bin" / "minirun")
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    script = [f"cd {work}"]
    for number, command in enumerate(commands):
        (jobs / f"{number}.sh").write_text(command.text + "\n")
        script.append(f"sh {jobs}/{number}.sh > {jobs}/{number}.out 2>&1 < /dev/null; "
                      f"echo $? > {jobs}/{number}.status")
    (jobs / "all.sh").write_text("\n".join(script) + "\n")
    env = {"REPO": str(REPO), "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:"
           "/usr/sbin:/usr/bin:/sbin:/bin"}
    result = run(["sh", str(jobs / "all.sh")], share=tmp_path, timeout=600, cwd=work, env=env)
    assert result.status == 0, result.output
    for number, command in enumerate(commands):
        where = f"stages/{lab}/README.md:{command.line} (in the VM)"
        status = (jobs / f"{number}.status").read_text().strip()
        lines = (jobs / f"{number}.out").read_text().splitlines()
        report = (f"{where}: $ {command.text}\nexit {status}\nexpected:\n  "
                  + "\n  ".join(command.expected) + "\ngot:\n  " + "\n  ".join(lines))
        assert status == "0" and matches(command.expected, lines), report
