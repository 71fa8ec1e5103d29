"""``minirun exec``: one more process inside a running container.

The new process enters the container's namespaces with setns(2) (the user namespace first,
so its rights cover the others), joins the container's cgroup, and then takes the same
process steps as the container's init: identity, capabilities, no_new_privs, environment,
working directory, execve. Entering the pid namespace takes effect for children only, so the
init process forks once more, exactly as for ``run``.
"""

from __future__ import annotations

import argparse
import json
import os

from minirun import state as state_dir
from minirun.errors import ConfigError
from minirun.isolation.namespaces import Namespace
from minirun.spec import Spec, load_bundle, parse


def execute(args: argparse.Namespace) -> int:
    from minirun import lifecycle, recipe, runtime

    container = state_dir.load(args.root, args.id)
    status = container.status()
    if status != "running":
        raise state_dir.ContainerError(f"container {args.id!r} is {status}, not running: "
                                       "exec needs a running container")
    spec = _process_spec(args, container.data["bundle"])
    joins = tuple((Namespace.from_oci(name), f"/proc/{container.pid}/ns/"
                   f"{Namespace.from_oci(name).proc_name}")
                  for name in container.data.get("namespaces", []))
    console = lifecycle.connect_console(args.console_socket) if spec.process.terminal else -1
    steps = recipe.build_process(spec, console=console >= 0, detach=args.detach,
                                 cgroup=container.cgroup)
    hooks = runtime.Hooks()
    if container.cgroup:
        cgroup = container.cgroup
        hooks.place = lambda pid: _join_cgroup(cgroup, pid)

    def record(pid: int) -> None:
        if args.pid_file:
            lifecycle.write_pid_file(args.pid_file, pid)

    launch = runtime.Launch(detach=args.detach, join=joins, console=console, on_pid=record)
    return runtime.run(steps, hooks, launch)


def _join_cgroup(cgroup: str, pid: int) -> None:
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as stream:
        stream.write(str(pid))


def _process_spec(args: argparse.Namespace, bundle: str) -> Spec:
    """The container's spec with the process replaced by --process or the arguments."""
    spec = load_bundle(bundle)
    if args.process:
        try:
            with open(args.process) as stream:
                process = json.load(stream)
        except (OSError, ValueError) as error:
            raise ConfigError(args.process, "", f"cannot be read as JSON: {error}") from None
        document = {**spec.raw, "process": process}
        return parse(document, bundle, args.process)
    if not args.args:
        raise ConfigError("command line", "ARGS", "give the program to run, or --process")
    process = dict(spec.raw["process"])
    process["args"] = list(args.args)
    process["terminal"] = bool(args.tty)
    if args.env:
        process["env"] = list(process.get("env", [])) + list(args.env)
    if args.cwd:
        process["cwd"] = args.cwd
    if args.user:
        uid, _, gid = args.user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise ConfigError("command line", "--user", f"{args.user!r} is not UID[:GID]")
        process["user"] = {**process.get("user", {}), "uid": int(uid),
                           "gid": int(gid or 0)}
    if args.no_new_privs:
        process["noNewPrivileges"] = True
    if args.cap:
        caps = process.get("capabilities", {})
        for name in ("bounding", "effective", "permitted"):
            caps[name] = list(caps.get(name, [])) + list(args.cap)
        process["capabilities"] = caps
    document = {**spec.raw, "process": process}
    return parse(document, bundle, spec.file)



