"""minirun's command line: parse, dispatch, and print any error once, as one line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from types import ModuleType

from minirun import log as minilog
from minirun.errors import ConfigError, MiniRunError, UnsupportedError
from minirun.stages import Stage, names

TYPE_CHECKING = False  # typing itself costs start-up time; mypy still reads this
if TYPE_CHECKING:
    from typing import Any

    from minirun.isolation.overlay import Overlay
    from minirun.spec import Spec

log = minilog.get("minirun")


class _Formatter(argparse.HelpFormatter):
    # A fixed width: finding the terminal's would import shutil on every start.
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=int(os.environ.get("COLUMNS", "100")))


_IMAGE_COMMANDS = ("unpack", "images", "rmi", "pull")


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minirun", formatter_class=_Formatter,
        description="A container runtime that builds isolation up stage by stage: "
                    + ", ".join(f"{s.label} ({s.year})" for s in Stage) + ". It takes "
                    "runc's command line, so podman and containerd can drive it.")
    parser.add_argument("--debug", action="store_true",
                        help="log every step and show tracebacks")
    parser.add_argument("--root", default="/run/minirun",
                        help="state directory (default: /run/minirun)")
    parser.add_argument("--log", help="write log lines (and errors) to this file")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--systemd-cgroup", action="store_true",
                        help="not supported: minirun manages cgroupfs directly")
    parser.add_argument("--cgroup-manager", choices=("cgroupfs", "systemd", "disabled"),
                        default="cgroupfs", help="disabled: never create a cgroup (resource "
                        "limits are then refused); systemd is not supported")
    parser.add_argument("--rootless", default="false", help=argparse.SUPPRESS)
    parser.add_argument("--criu", help=argparse.SUPPRESS)
    real_commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                          parser_class=_SubParser)
    real_commands.required = True
    commands = _Commands(real_commands, _command_in(argv))

    run = commands.add_parser("run", help="create and start a container (foreground)",
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
    run.add_argument("-d", "--detach", action="store_true",
                     help="create and start the container, then return")
    _create_options(run)
    run.add_argument("target", nargs="*", metavar="BUNDLE|IMAGE [ID] [-- COMMAND...]",
                     help="a bundle directory, or an image (OCI layout, oci-archive or "
                     "docker-save tar, or oci:PATH[:TAG]) to run at stage image or oci; "
                     "a command after -- replaces process.args")
    run.set_defaults(handler=_run)

    create = commands.add_parser("create", help="create a container; it waits for start")
    create.add_argument("-b", "--bundle", default=".", help="the bundle directory")
    create.add_argument("--stage", choices=names(), help=argparse.SUPPRESS)
    _create_options(create)
    create.add_argument("id", metavar="ID")
    create.set_defaults(handler=_create)

    for name, help_text in (("start", "let a created container run its process"),
                            ("state", "print the runtime-spec state of a container"),
                            ("pause", "freeze every process of a container"),
                            ("resume", "thaw a paused container")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("id", metavar="ID")
        sub.set_defaults(handler=_simple)

    kill = commands.add_parser("kill", help="send a signal to a container's init")
    kill.add_argument("-a", "--all", action="store_true", help="to every process of it")
    kill.add_argument("id", metavar="ID")
    kill.add_argument("signal", nargs="?", default="SIGTERM", metavar="SIGNAL")
    kill.set_defaults(handler=_kill)

    delete = commands.add_parser("delete", help="remove a stopped container")
    delete.add_argument("-f", "--force", action="store_true",
                        help="kill it first if it still runs")
    delete.add_argument("id", metavar="ID")
    delete.set_defaults(handler=_delete)

    listing = commands.add_parser("list", help="list containers")
    listing.add_argument("-f", "--format", choices=("table", "json"), default="table")
    listing.add_argument("-q", "--quiet", action="store_true", help="ids only")
    listing.set_defaults(handler=_list)

    ps = commands.add_parser("ps", help="list a container's processes")
    ps.add_argument("-f", "--format", choices=("table", "json"), default="table")
    ps.add_argument("id", metavar="ID")
    ps.add_argument("ps_args", nargs="*", help=argparse.SUPPRESS)
    ps.set_defaults(handler=_ps)

    execute = commands.add_parser("exec", help="run another process in a container")
    execute.add_argument("-p", "--process", help="a process.json (runtime-spec process)")
    execute.add_argument("-d", "--detach", action="store_true")
    execute.add_argument("-t", "--tty", action="store_true")
    execute.add_argument("--console-socket")
    execute.add_argument("--pid-file")
    execute.add_argument("-e", "--env", action="append", default=[])
    execute.add_argument("--cwd")
    execute.add_argument("-u", "--user", help="UID[:GID]")
    execute.add_argument("--cap", action="append", default=[], help=argparse.SUPPRESS)
    execute.add_argument("--no-new-privs", action="store_true", help=argparse.SUPPRESS)
    execute.add_argument("--preserve-fds", type=int, default=0, help=argparse.SUPPRESS)
    execute.add_argument("id", metavar="ID")
    execute.add_argument("args", nargs=argparse.REMAINDER)
    execute.set_defaults(handler=_exec)

    spec = commands.add_parser("spec", help="write a default config.json",
                               description="Write a default config.json for a bundle, as "
                               "'runc spec' does.")
    spec.add_argument("-b", "--bundle", default=".", help="where to write (default: .)")
    spec.add_argument("--force", action="store_true", help="overwrite an existing config.json")
    spec.add_argument("--rootless", action="store_true",
                      help="map the caller's uid and gid to root in a user namespace")
    spec.add_argument("args", nargs="*", help="the process to run (default: sh)")
    spec.set_defaults(handler=_spec)

    features = commands.add_parser("features", help="print the runtime-spec features document")
    features.set_defaults(handler=lambda args: _lifecycle().features())
    stages = commands.add_parser("stages", help="list the stages")
    stages.set_defaults(handler=_stages)
    # The image commands live in rootfs_fetch; importing it costs start-up, so it is done only
    # when one of them, or the help, is asked for.
    if commands.wanted is None or commands.wanted in _IMAGE_COMMANDS:
        _add_image_commands(commands)
    return parser


_COMMANDS = frozenset({"run", "create", "start", "state", "pause", "resume", "kill", "delete",
                       "list", "ps", "exec", "spec", "features", "stages", *_IMAGE_COMMANDS})
_GLOBAL_VALUES = ("--root", "--log", "--log-format", "--cgroup-manager", "--rootless", "--criu")


def _command_in(argv: list[str]) -> str | None:
    """The subcommand argv names, or None (a global --help, or none found): then every
    subcommand's parser is built. Building only the one in use saves start-up time."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in ("-h", "--help"):
            return None
        elif word in _GLOBAL_VALUES:
            skip = True
        elif not word.startswith("-"):
            return word if word in _COMMANDS else None
    return None


class _Skipped:
    """Stands in for the parser of a subcommand this invocation does not use."""

    def add_argument(self, *args: object, **kwargs: object) -> None:
        return None

    def set_defaults(self, **kwargs: object) -> None:
        return None


class _Commands:
    """add_parser that builds only the subcommand in use (all of them when it is unknown)."""

    def __init__(self, real: argparse._SubParsersAction, wanted: str | None) -> None:  # type: ignore[type-arg]
        self.real = real
        self.wanted = wanted

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if self.wanted is None or name == self.wanted:
            parser: argparse.ArgumentParser = self.real.add_parser(name, **kwargs)
            return parser
        return _Skipped()  # type: ignore[return-value]


class _SubParser(argparse.ArgumentParser):
    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(**kwargs)  # type: ignore[arg-type]


def _create_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pid-file", help="write the container's host pid here")
    parser.add_argument("--console-socket", help="unix socket to send the pty master to")
    parser.add_argument("--no-pivot", action="store_true",
                        help="move the rootfs onto / and chroot instead of pivot_root "
                        "(for a ramdisk root)")
    parser.add_argument("--no-new-keyring", action="store_true",
                        help="minirun never creates a session keyring; accepted for runc "
                        "compatibility")
    parser.add_argument("--preserve-fds", type=int, default=0,
                        help="pass this many descriptors from 3 up to the container")


def _lifecycle() -> ModuleType:
    from minirun import lifecycle

    return lifecycle


def _add_image_commands(commands: _Commands) -> None:
    try:
        from rootfs_fetch import commands as image_commands
    except ImportError:
        return
    pull = commands.add_parser("pull", help="fetch an image from a registry into an OCI "
                               "layout directory")
    pull.add_argument("reference", metavar="REFERENCE", help="[REGISTRY/]REPO[:TAG][@DIGEST]")
    pull.add_argument("layout", metavar="LAYOUT", help="OCI layout directory to write")
    pull.add_argument("--platform", default="linux/amd64", help="OS/ARCH[/VARIANT]")
    pull.add_argument("--insecure-http", action="store_true",
                      help="plain HTTP (loopback registries only)")
    pull.add_argument("--auth-file", help="a Docker config.json with credentials")
    pull.set_defaults(handler=_pull)
    for name, help_text in (("unpack", "turn an image into a bundle"),
                            ("images", "list the image store"),
                            ("rmi", "remove an image from the store")):
        adder = getattr(image_commands, f"add_{name}_arguments", None)
        handler = getattr(image_commands, f"{name}_command", None)
        if adder is None or handler is None:
            continue
        sub = commands.add_parser(name, help=help_text)
        adder(sub)
        sub.set_defaults(handler=_rmi if name == "rmi" else handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `minirun run BUNDLE|IMAGE [ID] -- COMMAND...` runs COMMAND instead of process.args.
    override: list[str] = []
    if "run" in argv and "--" in argv[argv.index("run"):]:
        cut = argv.index("--", argv.index("run"))
        argv, override = argv[:cut], argv[cut + 1:]
    args = _parser(argv).parse_args(argv)
    args.override = override
    try:
        _setup_logging(args)
    except OSError as error:  # --log names a file that cannot be opened
        print(f"minirun: --log {args.log}: cannot open: {error.strerror}", file=sys.stderr)
        return 2
    try:
        log.debug("argv: %s", argv)
        os.environ["MINIRUN_CGROUP_MANAGER"] = args.cgroup_manager
        if args.systemd_cgroup or args.cgroup_manager == "systemd":
            raise UnsupportedError("--systemd-cgroup is not supported: minirun manages "
                                   "cgroupfs itself (use cgroup_manager = \"cgroupfs\")")
        return int(args.handler(args))
    except MiniRunError as error:
        if args.debug:
            log.exception("failed")
        print(f"minirun: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"minirun: hint: {error.hint}", file=sys.stderr)
        if args.log:  # to the file only: stderr has it already
            minilog.to_file(minilog.ERROR,
                            error.message + (f" ({error.hint})" if error.hint else ""))
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a bug in minirun: still one line unless --debug
        if args.debug:
            raise
        print(f"minirun: internal error: {type(error).__name__}: {error} (run with --debug "
              "for the traceback)", file=sys.stderr)
        return 1


def _setup_logging(args: argparse.Namespace) -> None:
    name = os.environ.get("MINIRUN_LOG", "")
    if args.debug:
        name = "DEBUG"
    elif not name:
        # An explicit --stage is the teaching mode: say what the stage leaves out.
        name = "INFO" if getattr(args, "stage", None) else "WARNING"
    # The image commands' modules log through the logging package directly.
    images = args.command in _IMAGE_COMMANDS
    minilog.setup(minilog.level_named(name), file=args.log,
                  json_format=args.log_format == "json", standard=images)


def _run(args: argparse.Namespace) -> int:
    bundle, container_id = _bundle_and_id(args)
    stage = Stage.parse(args.stage) if args.stage else Stage.OCI

    from minirun import recipe as recipe_module
    from minirun.spec import load_bundle

    if _looks_like_image(bundle):
        return _run_image(args, bundle, container_id, stage)
    if args.detach:
        _create(args, bundle=bundle, container_id=container_id)
        return int(_lifecycle().start(args.root, container_id))
    spec = _with_command(load_bundle(bundle), args.override)
    if args.explain:
        print("\n".join(recipe_module.build(spec, stage, no_pivot=args.no_pivot,
                                            preserve_fds=args.preserve_fds).explain()))
        return 0
    return _run_spec(args, spec, stage, container_id)


def _looks_like_image(target: str) -> bool:
    """An OCI layout directory, an image archive, or a transport-prefixed reference."""
    if target.startswith(("oci:", "oci-archive:", "docker-archive:")):
        return True
    if os.path.isdir(target):
        return os.path.isfile(os.path.join(target, "index.json")) and not os.path.exists(
            os.path.join(target, "config.json"))
    return os.path.isfile(target) and target.endswith((".tar", ".tar.gz", ".oci", ".tgz"))


def _run_spec(args: argparse.Namespace, spec: Spec, stage: Stage, container_id: str,
              overlay: Overlay | None = None) -> int:
    if os.geteuid() != 0:
        raise UnsupportedError("minirun run needs root (try sudo)")
    from minirun import recipe as recipe_module
    from minirun import runtime
    from minirun.cgroup_setup import hooks_for

    def build(cgroup: str | None) -> recipe_module.Recipe:
        return recipe_module.build(spec, stage, cgroup, overlay, no_pivot=args.no_pivot,
                                   preserve_fds=args.preserve_fds, container_id=container_id)

    # Built first without a cgroup, so a bad or unsupported config is refused before the
    # cgroup probe warns about anything; built again only if the container got a cgroup
    # (its mounts and first steps depend on it).
    recipe = build(None)
    hooks = hooks_for(spec, stage, container_id)
    if hooks.cgroup is not None:
        recipe = build(hooks.cgroup)
    for item in recipe.left_out:
        log.info("stage %s leaves out %s", stage.label, item)
    launch = runtime.Launch()
    if args.pid_file:  # in the foreground too, as runc writes it
        from minirun.lifecycle import write_pid_file

        pid_file = args.pid_file
        launch = runtime.Launch(on_pid=lambda pid: write_pid_file(pid_file, pid))
    return runtime.run(recipe, hooks, launch)


def _run_image(args: argparse.Namespace, reference: str, container_id: str,
               stage: Stage) -> int:
    from pathlib import Path

    from minirun import image_run
    from minirun import recipe as recipe_module

    minilog.use_standard_logging()  # the image store's modules log through logging
    if not stage.has(Stage.IMAGE):
        raise UnsupportedError(f"running an image needs stage image or oci, not "
                               f"{stage.label} (or: minirun unpack IMAGE BUNDLE, then run "
                               "the bundle)")
    if args.detach:
        # Not yet: the store bundle lives as long as this process; remove this refusal when
        # a detached container's bundle is kept until `minirun delete`.
        raise UnsupportedError("run --detach of an image is not supported yet: minirun unpack "
                               "IMAGE BUNDLE, then minirun run --detach -b BUNDLE ID")
    if os.geteuid() != 0:
        raise UnsupportedError("minirun run needs root (try sudo)")
    container = image_run.prepare(reference, Path(args.store), container_id)
    container.spec = _with_command(container.spec, args.override)
    try:
        if args.explain:
            recipe = recipe_module.build(container.spec, stage, None, container.overlay)
            print("\n".join(recipe.explain()))
            return 0
        return _run_spec(args, container.spec, stage, container_id, container.overlay)
    finally:
        container.remove()


def _with_command(spec: Spec, command: list[str]) -> Spec:
    """The spec with process.args replaced by the command given after `--`."""
    if not command:
        return spec
    from minirun.record import replace

    raw = {**spec.raw, "process": {**spec.raw["process"], "args": list(command)}}
    return replace(spec, raw=raw, process=replace(spec.process, args=tuple(command)))


def _bundle_and_id(args: argparse.Namespace) -> tuple[str, str]:
    target = list(args.target)
    if len(target) > 2:
        raise ConfigError("command line", "", f"too many arguments: {' '.join(target)}")
    if args.bundle is not None:
        bundle = args.bundle
        container_id = target[0] if target else ""
        if len(target) > 1:
            raise ConfigError("command line", "", "with --bundle, give only the container id")
    elif target and (os.path.isdir(target[0]) or "/" in target[0] or len(target) == 2
                     or _looks_like_image(target[0])):
        bundle = target.pop(0)
        container_id = target[0] if target else ""
    elif target and not os.path.exists("config.json"):
        # runc's `run ID` takes the bundle from the current directory; with no config.json
        # there, the word was meant as a bundle or an image.
        raise ConfigError(target[0], "", "no such bundle directory or image (and no "
                                         "config.json here to run it as a container id)")
    else:
        bundle = "."
        container_id = target[0] if target else ""
    container_id = container_id or f"minirun-{os.getpid()}"
    from minirun.state import valid_id

    if not valid_id(container_id, longest=128):
        raise ConfigError("command line", "ID", f"{container_id!r} is not a valid container "
                          "id (letters, digits, and _ . + - after the first character)")
    return bundle, container_id


def _create(args: argparse.Namespace, bundle: str | None = None,
            container_id: str | None = None) -> int:
    lifecycle = _lifecycle()
    if os.geteuid() != 0:
        raise UnsupportedError("minirun create needs root (try sudo)")
    options = lifecycle.CreateOptions(
        root=args.root, bundle=bundle or args.bundle, container_id=container_id or args.id,
        pid_file=args.pid_file, console_socket=args.console_socket, no_pivot=args.no_pivot,
        preserve_fds=args.preserve_fds,
        stage=Stage.parse(args.stage) if args.stage else Stage.OCI)
    return int(lifecycle.create(options))


def _simple(args: argparse.Namespace) -> int:
    lifecycle = _lifecycle()
    if args.command == "start":
        return int(lifecycle.start(args.root, args.id))
    if args.command == "state":
        return int(lifecycle.state(args.root, args.id))
    return int(lifecycle.pause(args.root, args.id, freeze=args.command == "pause"))


def _kill(args: argparse.Namespace) -> int:
    lifecycle = _lifecycle()
    return int(lifecycle.kill(args.root, args.id, lifecycle.parse_signal(args.signal),
                              args.all))


def _delete(args: argparse.Namespace) -> int:
    return int(_lifecycle().delete(args.root, args.id, args.force))


def _list(args: argparse.Namespace) -> int:
    if args.quiet:
        from minirun.state import all_ids

        print("\n".join(all_ids(args.root)))
        return 0
    return int(_lifecycle().list_containers(args.root, args.format == "json"))


def _ps(args: argparse.Namespace) -> int:
    return int(_lifecycle().ps(args.root, args.id, args.format == "json"))


def _exec(args: argparse.Namespace) -> int:
    from minirun import exec_process

    return exec_process.execute(args)


def _rmi(args: argparse.Namespace) -> int:
    """rmi, keeping the layers of images whose containers run now."""
    from pathlib import Path

    from minirun.image_run import images_in_use
    from rootfs_fetch.commands import rmi_command

    return int(rmi_command(args, in_use=images_in_use(Path(args.store))))


def _pull(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rootfs_fetch.registry import ProgressPrinter, pull

    with ProgressPrinter() as progress:
        digest = pull(args.reference, Path(args.layout), platform=args.platform,
                      insecure_http=args.insecure_http, progress=progress,
                      auth_file=Path(args.auth_file) if args.auth_file else None)
    print(digest)
    return 0


def _spec(args: argparse.Namespace) -> int:
    from minirun.spec import CONFIG_NAME, default_config

    path = os.path.join(args.bundle, CONFIG_NAME)
    if os.path.exists(path) and not args.force:
        raise ConfigError(path, "", "already exists (use --force to overwrite)")
    config = default_config(args.args)
    if args.rootless:
        _make_rootless(config)
    text = json.dumps(config, indent=2) + "\n"
    try:
        with open(path, "x" if not args.force else "w") as stream:
            stream.write(text)
    except OSError as error:
        raise ConfigError(path, "", f"cannot be written: {error.strerror}") from None
    return 0


def _make_rootless(config: dict) -> None:  # type: ignore[type-arg]
    """What runc spec --rootless changes: a user namespace mapping the caller to root, no
    network namespace (an unprivileged user cannot configure one), sysfs bound, no cgroup."""
    uid, gid = os.getuid(), os.getgid()
    linux = config["linux"]
    linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"]
    linux["namespaces"].append({"type": "user"})
    linux["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
    config["mounts"] = [m for m in config["mounts"] if m["type"] not in ("cgroup", "mqueue")]
    for mount in config["mounts"]:
        if mount["type"] == "sysfs":
            mount.update({"type": "none", "source": "/sys",
                          "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
        if mount["type"] == "devpts":
            mount["options"] = [o for o in mount["options"] if not o.startswith("gid=")]


def _stages(args: argparse.Namespace) -> int:
    for stage in Stage:
        print(f"{stage.label:<11} {stage.year}  {stage.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

