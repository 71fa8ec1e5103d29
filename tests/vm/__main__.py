"""Command line of the test VM; run it from the checkout's top directory:

    /usr/bin/python3 -m tests.vm build
        prepare the kernel and initramfs in $MINIRUN_VM_CACHE (default /var/cache/minirun/vm)
    /usr/bin/python3 -m tests.vm run [--timeout S] [--memory 1G] [--share DIR] -- CMD ARGS...
        boot the VM, run CMD as root in the current directory, print its output as it comes,
        and exit with its exit status (125 when the VM itself failed, 124 on timeout)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from minirun.errors import MiniRunError

from .build import ensure_built
from .machine import VmTimeout, run

EXIT_VM_FAILED = 125
EXIT_TIMEOUT = 124


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.vm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="action", required=True)
    commands.add_parser("build", help="prepare the kernel and initramfs cache")
    runner = commands.add_parser("run", help="run a command as root in a fresh VM")
    runner.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    runner.add_argument("--memory", default="1G", help="guest memory (default 1G)")
    runner.add_argument("--share", type=Path, help="host directory mounted read-write")
    runner.add_argument("command", nargs="+", help="the command, after --")
    options = parser.parse_args(argv)
    try:
        if options.action == "build":
            return _build()
        return _run(options.command, options.share, options.timeout, options.memory)
    except MiniRunError as error:
        print(f"tests.vm: {error}", file=sys.stderr)
        if error.hint:
            print(f"hint: {error.hint}", file=sys.stderr)
        return EXIT_TIMEOUT if isinstance(error, VmTimeout) else EXIT_VM_FAILED


def _build() -> int:
    started = time.monotonic()
    image = ensure_built(log=True)
    print(f"{image.kernel} ({image.kernel_release}) and {image.initramfs} ready "
          f"in {time.monotonic() - started:.1f} s")
    return 0


def _write(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def _run(command: list[str], share: Path | None, timeout: float, memory: str) -> int:
    result = run(command, share, timeout, memory, on_output=_write)
    if result.output and not result.output.endswith("\n"):
        _write(b"\n")  # keep the summary line below on a line of its own
    print(f"tests.vm: exit status {result.status} after {result.seconds:.1f} s "
          f"(console: {result.console_log})", file=sys.stderr)
    return result.status


if __name__ == "__main__":
    sys.exit(main())
