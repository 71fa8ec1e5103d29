"""minirun's command line: parse, dispatch, and print any error once, as one line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import TYPE_CHECKING

from minirun.errors import EXIT_USAGE, ConfigError, MiniRunError, UnsupportedError
from minirun.stages import Stage, names

if TYPE_CHECKING:
    from minirun.isolation.overlay import Overlay
    from minirun.spec import Spec

log = logging.getLogger("minirun")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minirun",
        description="A container runtime that builds isolation up stage by stage: "
                    + ", ".join(f"{s.label} ({s.year})" for s in Stage) + ".")
    parser.add_argument("--debug", action="store_true",
                        help="log every step and show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser("run", help="run a container in the foreground",
                              description="Run BUNDLE's config.json at the chosen stage. The "
                              "container's exit status becomes minirun's (128+N for signal N).")
    run.add_argument("-b", "--bundle", help="the bundle directory (then the first argument "
                     "is the container id)")
    run.add_argument("--stage", choices=names(), help="how much isolation to apply "
                     "(default: oci, everything)")
    run.add_argument("--store", default="/var/lib/minirun",
                     help="content store for images (default: /var/lib/minirun)")
    run.add_argument("--explain", action="store_true",
                     help="print the ordered steps the stage would carry out; run nothing")
    run.add_argument("target", nargs="*", metavar="BUNDLE|IMAGE [ID]",
                     help="a bundle directory, or an image (OCI layout, oci-archive or "
                     "docker-save tar, or oci:PATH[:TAG]) to run at stage image or oci")
    run.set_defaults(handler=_run)

    spec = commands.add_parser("spec", help="write a default config.json",
                               description="Write a default config.json for a bundle, as "
                               "'runc spec' does.")
    spec.add_argument("-b", "--bundle", default=".", help="where to write (default: .)")
    spec.add_argument("--force", action="store_true", help="overwrite an existing config.json")
    spec.add_argument("args", nargs="*", help="the process to run (default: sh)")
    spec.set_defaults(handler=_spec)

    stages = commands.add_parser("stages", help="list the stages")
    stages.set_defaults(handler=_stages)
    _add_image_commands(commands)
    return parser


def _add_image_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    try:
        from rootfs_fetch import commands as image_commands
    except ImportError:
        return
    for name, help_text in (("unpack", "turn an image into a bundle"),
                            ("images", "list the image store"),
                            ("rmi", "remove an image from the store")):
        adder = getattr(image_commands, f"add_{name}_arguments", None)
        handler = getattr(image_commands, f"{name}_command", None)
        if adder is None or handler is None:
            continue
        sub = commands.add_parser(name, help=help_text)
        adder(sub)
        sub.set_defaults(handler=handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    _setup_logging(args)
    try:
        return int(args.handler(args))
    except MiniRunError as error:
        if args.debug:
            log.exception("failed")
        print(f"minirun: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"minirun: hint: {error.hint}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def _setup_logging(args: argparse.Namespace) -> None:
    level = os.environ.get("MINIRUN_LOG", "").upper()
    if args.debug:
        level = "DEBUG"
    elif not level:
        # An explicit --stage is the teaching mode: say what the stage leaves out.
        level = "INFO" if getattr(args, "stage", None) else "WARNING"
    logging.basicConfig(format="minirun: %(message)s", level=getattr(logging, level,
                                                                     logging.WARNING))


def _run(args: argparse.Namespace) -> int:
    bundle, container_id = _bundle_and_id(args)
    stage = Stage.parse(args.stage) if args.stage else Stage.OCI

    from minirun import image_run
    from minirun import recipe as recipe_module
    from minirun.spec import load_bundle

    if image_run.looks_like_image(bundle):
        return _run_image(args, bundle, container_id, stage)
    spec = load_bundle(bundle)
    if args.explain:
        print("\n".join(recipe_module.build(spec, stage).explain()))
        return 0
    return _run_spec(spec, stage, container_id)


def _run_spec(spec: Spec, stage: Stage, container_id: str,
              overlay: Overlay | None = None) -> int:
    if os.geteuid() != 0:
        raise UnsupportedError("minirun run needs root (try sudo)")
    from minirun import recipe as recipe_module
    from minirun import runtime
    from minirun.cgroup_setup import hooks_for

    # Refuse a bad or unsupported config before the cgroup probe warns about anything.
    recipe_module.build(spec, stage, None, overlay)
    hooks = hooks_for(spec, stage, container_id)
    recipe = recipe_module.build(spec, stage, hooks.cgroup, overlay)
    for item in recipe.left_out:
        log.info("stage %s leaves out %s", stage.label, item)
    return runtime.run(recipe, hooks)


def _run_image(args: argparse.Namespace, reference: str, container_id: str,
               stage: Stage) -> int:
    from pathlib import Path

    from minirun import image_run
    from minirun import recipe as recipe_module

    if not stage.has(Stage.IMAGE):
        raise UnsupportedError(f"running an image needs stage image or oci, not "
                               f"{stage.label} (or: minirun unpack IMAGE BUNDLE, then run "
                               "the bundle)")
    if os.geteuid() != 0:
        raise UnsupportedError("minirun run needs root (try sudo)")
    container = image_run.prepare(reference, Path(args.store), container_id)
    try:
        if args.explain:
            recipe = recipe_module.build(container.spec, stage, None, container.overlay)
            print("\n".join(recipe.explain()))
            return 0
        return _run_spec(container.spec, stage, container_id, container.overlay)
    finally:
        container.remove()


def _bundle_and_id(args: argparse.Namespace) -> tuple[str, str]:
    target = list(args.target)
    if len(target) > 2:
        raise ConfigError("command line", "", f"too many arguments: {' '.join(target)}")
    if args.bundle is not None:
        bundle = args.bundle
        container_id = target[0] if target else ""
        if len(target) > 1:
            raise ConfigError("command line", "", "with --bundle, give only the container id")
    elif target and (os.path.isdir(target[0]) or "/" in target[0] or len(target) == 2):
        bundle = target.pop(0)
        container_id = target[0] if target else ""
    else:
        bundle = "."
        container_id = target[0] if target else ""
    container_id = container_id or f"minirun-{os.getpid()}"
    if not _ID.match(container_id):
        raise ConfigError("command line", "ID", f"{container_id!r} is not a valid container "
                          "id (letters, digits, and _ . + - after the first character)")
    return bundle, container_id


def _spec(args: argparse.Namespace) -> int:
    from minirun.spec import CONFIG_NAME, default_config

    path = os.path.join(args.bundle, CONFIG_NAME)
    if os.path.exists(path) and not args.force:
        raise ConfigError(path, "", "already exists (use --force to overwrite)")
    text = json.dumps(default_config(args.args), indent=2) + "\n"
    try:
        with open(path, "x" if not args.force else "w") as stream:
            stream.write(text)
    except OSError as error:
        raise ConfigError(path, "", f"cannot be written: {error.strerror}") from None
    return 0


def _stages(args: argparse.Namespace) -> int:
    for stage in Stage:
        print(f"{stage.label:<11} {stage.year}  {stage.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["EXIT_USAGE", "main"]
