"""Bad input and failed starts: one line naming what is wrong, the right exit status, nothing
left behind.

A config problem is one line ``minirun: FILE: JSON.PATH: problem`` with exit status 2, no
traceback, and neither the bundle nor the host changed (the autouse ``no_leftovers`` fixture
checks mounts and processes). A failure after fork names the system call and the errno
symbol once, with a hint where the errno misleads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import MINIRUN, minirun, only_line

from minirun.recipe import NOT_YET

pytestmark = pytest.mark.root

Edit = Callable[[dict[str, Any]], None]


def tree_state(top: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under ``top`` with its mode, size, mtime and link target."""
    state = {}
    for path in [top, *top.rglob("*")]:
        st = path.lstat()
        target = os.readlink(path) if path.is_symlink() else ""
        state[str(path.relative_to(top))] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    return state


def set_field(dotted: str, value: object) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        for key in parents:
            config = config[key]
        config[last] = value
    return edit


def drop_field(dotted: str) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        for key in parents:
            config = config[key]
        del config[last]
    return edit


def add_mount(**entry: object) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        config["mounts"].append(entry)
    return edit


def assert_config_error(bundle: Path, json_path: str, problem: str, *args: str) -> str:
    """Run the bundle; expect exit 2 and one line naming config.json, the path and problem."""
    before = tree_state(bundle)
    result = minirun("run", *args, str(bundle))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    line = only_line(result.stderr)
    prefix = f"minirun: {bundle / 'config.json'}: "
    assert line.startswith(prefix + (f"{json_path}: " if json_path else "")), line
    assert problem in line, line
    assert tree_state(bundle) == before, "the bundle changed"
    return line


# (id, edit, JSON path named, words of the problem)
FIELD_ERRORS: list[tuple[str, Edit, str, str]] = [
    ("no-ociVersion", drop_field("ociVersion"), "ociVersion", "is required but missing"),
    ("no-process", drop_field("process"), "process", "is required but missing"),
    ("no-args", drop_field("process.args"), "process.args", "is required but missing"),
    ("empty-args", set_field("process.args", []), "process.args", "at least the program"),
    ("no-cwd", drop_field("process.cwd"), "process.cwd", "is required but missing"),
    ("no-root", drop_field("root"), "root", "is required but missing"),
    ("no-root-path", drop_field("root.path"), "root.path", "is required but missing"),
    ("relative-cwd", set_field("process.cwd", "tmp/work"), "process.cwd",
     "must be an absolute path, got 'tmp/work'"),
    ("args-string", set_field("process.args", "sh -c true"), "process.args",
     "must be an array, got a string"),
    ("args-item-number", set_field("process.args", ["sh", 1]), "process.args[1]",
     "must be a string, got an integer"),
    ("args-nul", set_field("process.args", ["echo", "a\0b"]), "process.args[1]",
     "NUL"),
    ("uid-string", set_field("process.user.uid", "0"), "process.user.uid",
     "must be an integer, got a string"),
    ("uid-negative", set_field("process.user.uid", -1), "process.user.uid",
     "must be between 0 and 4294967295, got -1"),
    ("uid-too-big", set_field("process.user.uid", 1 << 32), "process.user.uid",
     "must be between 0 and 4294967295"),
    ("uid-boolean", set_field("process.user.uid", True), "process.user.uid",
     "must be an integer, got true"),
    ("gid-float", set_field("process.user.gid", 1.5), "process.user.gid",
     "must be an integer, got a number"),
    ("env-no-equals", set_field("process.env", ["PATH=/bin", "JUSTANAME"]), "process.env[1]",
     "must be NAME=VALUE, got 'JUSTANAME'"),
    ("env-string", set_field("process.env", "PATH=/bin"), "process.env",
     "must be an array, got a string"),
    ("terminal-string", set_field("process.terminal", "false"), "process.terminal",
     "must be a boolean, got a string"),
    ("unknown-capability", set_field("process.capabilities.bounding", ["CAP_KILL", "CAP_FLY"]),
     "process.capabilities.bounding[1]", "unknown capability 'CAP_FLY'"),
    ("capability-lowercase", set_field("process.capabilities.effective", ["kill"]),
     "process.capabilities.effective[0]", "unknown capability 'kill'"),
    ("unknown-rlimit", set_field("process.rlimits", [{"type": "RLIMIT_FUN", "soft": 1,
                                                      "hard": 1}]),
     "process.rlimits[0].type", "unknown resource limit 'RLIMIT_FUN'"),
    ("rlimit-soft-above-hard", set_field("process.rlimits", [{"type": "RLIMIT_NOFILE",
                                                              "soft": 10, "hard": 5}]),
     "process.rlimits[0]", "soft limit 10 is above the hard limit 5"),
    ("oom-score-out-of-range", set_field("process.oomScoreAdj", 5000), "process.oomScoreAdj",
     "between -1000 and 1000"),
    ("mount-relative-destination", add_mount(destination="mnt", type="tmpfs", source="tmpfs"),
     "mounts[7].destination", "must be an absolute path"),
    ("mount-unsupported-option", add_mount(destination="/mnt", type="tmpfs", source="tmpfs",
                                           options=["tmpcopyup"]),
     "mounts[7]", "option 'tmpcopyup' is not supported"),
    ("mount-idmap-option", add_mount(destination="/mnt", type="bind", source="/tmp",
                                     options=["rbind", "idmap"]),
     "mounts[7]", "option 'idmap' is not supported"),
    ("mount-options-string", add_mount(destination="/mnt", type="tmpfs", source="tmpfs",
                                       options="ro"),
     "mounts[7].options", "must be an array, got a string"),
    ("bind-source-missing", add_mount(destination="/mnt", type="bind",
                                      source="/nonexistent-minirun-source", options=["rbind"]),
     "mounts[7]", "bind source /nonexistent-minirun-source does not exist"),
    ("bind-without-source", add_mount(destination="/mnt", options=["rbind"]),
     "mounts[7]", "a bind mount needs a source"),
    ("unknown-namespace", set_field("linux.namespaces", [{"type": "mount"},
                                                         {"type": "galaxy"}]),
     "linux.namespaces[1].type", "unknown namespace type 'galaxy'"),
    ("namespace-twice", set_field("linux.namespaces", [{"type": "mount"}, {"type": "mount"}]),
     "linux.namespaces[1].type", "listed twice"),
    ("hostname-without-uts", set_field("linux.namespaces", [{"type": "mount"},
                                                            {"type": "pid"}]),
     "hostname", "needs a uts namespace"),
    ("id-mappings-without-userns", set_field("linux.uidMappings", [
        {"containerID": 0, "hostID": 100000, "size": 1}]),
     "linux.uidMappings", "need a user namespace"),
]


@pytest.mark.parametrize("edit,json_path,problem",
                         [pytest.param(e, j, p, id=i) for i, e, j, p in FIELD_ERRORS])
def test_a_bad_field_is_one_line_naming_file_path_and_problem(
        make_bundle: Callable[..., Path], edit: Edit, json_path: str, problem: str) -> None:
    bundle = make_bundle(["sh", "-c", "touch /ran"], edit)
    assert_config_error(bundle, json_path, problem)
    assert not (bundle / "rootfs" / "ran").exists()


@pytest.mark.parametrize("stage", ["chroot", "jail", "namespaces"])
def test_a_bad_field_is_refused_at_every_stage(make_bundle: Callable[..., Path],
                                               stage: str) -> None:
    bundle = make_bundle(["true"], set_field("process.user.uid", "root"))
    assert_config_error(bundle, "process.user.uid", "must be an integer", "--stage", stage)


@pytest.mark.parametrize("text,problem", [
    pytest.param("{\"ociVersion\": \"1.2.0\",", "invalid JSON at line 1 column", id="cut-short"),
    pytest.param("", "invalid JSON at line 1 column 1", id="empty"),
    pytest.param("{'single': 'quotes'}", "invalid JSON at line 1 column 2", id="single-quotes"),
    pytest.param("[" * 100000 + "]" * 100000, "nested too deeply", id="deeply-nested"),
    pytest.param("[\"sh\"]", "the document must be a JSON object, got an array", id="array"),
    pytest.param("\"config\"", "the document must be a JSON object, got a string",
                 id="string"),
    pytest.param("null", "the document must be a JSON object, got null", id="null"),
])
def test_a_config_that_is_not_a_json_object_is_one_line(
        make_bundle: Callable[..., Path], text: str, problem: str) -> None:
    bundle = make_bundle(["true"])
    (bundle / "config.json").write_text(text)
    assert_config_error(bundle, "", problem)


def test_a_config_that_is_not_utf8_is_one_line(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["true"])
    (bundle / "config.json").write_bytes(b'{"ociVersion": "\xff\xfe"}')
    assert_config_error(bundle, "", "is not UTF-8 text")


def test_a_missing_bundle_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bundle"
    result = minirun("run", str(missing))
    assert result.returncode == 2
    assert only_line(result.stderr) == f"minirun: {missing}: bundle directory does not exist"
    assert not missing.exists()
    result = minirun("run", "-b", str(missing), "some-id")
    assert result.returncode == 2
    assert only_line(result.stderr) == f"minirun: {missing}: bundle directory does not exist"


def test_a_missing_config_json_says_how_to_make_one(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    before = tree_state(bundle)
    result = minirun("run", str(bundle))
    assert result.returncode == 2
    line = only_line(result.stderr)
    assert line.startswith(f"minirun: {bundle / 'config.json'}: missing"), line
    assert "minirun spec" in line
    assert tree_state(bundle) == before


def test_an_unreadable_config_json_is_named(make_bundle: Callable[..., Path]) -> None:
    # Root reads any file whatever its mode, so make config.json something open() refuses.
    bundle = make_bundle(["true"])
    (bundle / "config.json").unlink()
    (bundle / "config.json").mkdir()
    assert_config_error(bundle, "", "cannot be read: Is a directory")


def test_a_missing_rootfs_directory_is_named(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["true"])
    shutil.rmtree(bundle / "rootfs")
    assert_config_error(bundle, "root.path", f"{bundle / 'rootfs'} does not exist")


def test_a_rootfs_that_is_a_file_is_named(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["true"], set_field("root.path", "config.json"))
    assert_config_error(bundle, "root.path", "is not a directory")


@pytest.mark.parametrize("json_path,what", sorted(NOT_YET.items()))
def test_unsupported_fields_are_refused_at_stage_oci(
        make_bundle: Callable[..., Path], json_path: str, what: str) -> None:
    # Every field the recipe lists as not yet carried out, set to something non-empty.
    bundle = make_bundle(["sh", "-c", "touch /ran"], set_field(json_path, "unsupported"))
    assert_config_error(bundle, json_path, f"{what} are not supported")
    assert_config_error(bundle, json_path, "not supported", "--stage", "oci")
    assert not (bundle / "rootfs" / "ran").exists()


def test_an_unsupported_field_is_only_left_out_below_stage_oci(
        make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sh", "-c", "echo ran"],
                         set_field("process.apparmorProfile", "docker-default"))
    result = minirun("run", "--stage", "namespaces", str(bundle))
    assert result.returncode == 0 and result.stdout == "ran\n", result.stderr
    explained = minirun("run", "--explain", "--stage", "namespaces", str(bundle), check=True)
    assert "left out: process.apparmorProfile: not supported by minirun yet" in explained.stdout


def test_an_invalid_container_id_is_refused(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["true"])
    result = minirun("run", "-b", str(bundle), "../escape")
    assert result.returncode == 2
    assert "is not a valid container id" in only_line(result.stderr)


# --- failures after fork: one line with the system call and the errno symbol ---------------


def failed_start(bundle: Path, call: str, errno_name: str) -> tuple[str, str]:
    """Run a bundle whose start fails; return (error line, hint line or '')."""
    result = minirun("run", str(bundle))
    expected = {"ENOENT": 127, "EACCES": 126} if call == "execve" else {}
    assert result.returncode == expected.get(errno_name, 1), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("minirun: ") and not line.startswith("minirun: hint:")
              and "no cgroup for this container" not in line]
    assert len(errors) == 1, result.stderr  # reported once, not by each process
    assert errors[0].startswith(f"minirun: {call}("), errors[0]
    assert f": {errno_name} (" in errors[0], errors[0]
    hints = [line for line in result.stderr.splitlines() if line.startswith("minirun: hint:")]
    assert len(hints) <= 1, result.stderr
    return errors[0], hints[0] if hints else ""


def test_exec_of_a_missing_program_names_execve_enoent_and_hints(
        make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["/no/such/program", "arg"])
    line, hint = failed_start(bundle, "execve", "ENOENT")
    assert "/no/such/program" in line
    # ENOENT from execve may mean the program or its interpreter: say which.
    assert "no such file in the container" in line or "missing" in hint, line + hint


def test_a_program_missing_from_path_names_the_path(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["no-such-program"])
    line, _ = failed_start(bundle, "execve", "ENOENT")
    assert "no-such-program" in line and "PATH=" in line


def test_a_script_with_a_crlf_shebang_gets_a_crlf_hint(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["/script.sh"])
    script = bundle / "rootfs" / "script.sh"
    script.write_bytes(b"#!/bin/sh\r\necho from windows\r\n")
    script.chmod(0o755)
    line, hint = failed_start(bundle, "execve", "ENOENT")
    assert "/script.sh" in line
    assert "CRLF" in hint, hint


def test_a_script_whose_interpreter_is_missing_names_it(
        make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["/script.py"])
    script = bundle / "rootfs" / "script.py"
    script.write_text("#!/usr/bin/python3\nprint('hi')\n")
    script.chmod(0o755)
    _, hint = failed_start(bundle, "execve", "ENOENT")
    assert "/usr/bin/python3" in hint, hint


def test_exec_of_a_non_executable_file_names_eacces(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["/etc/passwd"])
    line, hint = failed_start(bundle, "execve", "EACCES")
    assert "/etc/passwd" in line
    assert "not executable" in hint


def test_exec_of_a_directory_names_eacces(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["/bin"])
    failed_start(bundle, "execve", "EACCES")


def test_a_cwd_that_is_a_file_names_process_cwd(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["true"], set_field("process.cwd", "/etc/passwd"))
    failed_start(bundle, "process.cwd /etc/passwd: openat2", "ENOTDIR")


def test_a_cwd_the_user_may_not_enter_names_chdir(make_bundle: Callable[..., Path]) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["process"]["user"] = {"uid": 1000, "gid": 1000}
        config["process"]["cwd"] = "/root"

    bundle = make_bundle(["true"], edit)
    (bundle / "rootfs" / "root").chmod(0o700)
    line, _ = failed_start(bundle, "chdir", "EACCES")
    assert "/root (process.cwd)" in line


def test_a_hostname_the_kernel_refuses_names_sethostname(
        make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["true"], set_field("hostname", "h" * 100))
    failed_start(bundle, "sethostname", "EINVAL")


def test_a_mount_option_the_kernel_refuses_names_the_mount_and_its_entry(
        make_bundle: Callable[..., Path]) -> None:
    # Unknown options go to the file system as data; only the kernel can refuse them.
    bundle = make_bundle(["true"], add_mount(destination="/mnt", type="tmpfs", source="tmpfs",
                                             options=["nosuid", "colour=blue"]))
    line, _ = failed_start(bundle, "mount", "EINVAL")
    assert "/mnt (mounts[7])" in line and "colour=blue" in line, line


def test_a_read_only_bind_mount_is_read_only(make_bundle: Callable[..., Path],
                                             tmp_path: Path) -> None:
    # A bind mount's flags need a second, remounting call on the new mount itself.
    source = tmp_path / "shared-dir"
    source.mkdir()
    (source / "data").write_text("from the host\n")
    bundle = make_bundle(
        ["sh", "-c", "cat /data/data /hostname-file; touch /data/new; echo touch=$?"],
        lambda config: config["mounts"].extend([
            {"destination": "/data", "type": "bind", "source": str(source),
             "options": ["rbind", "ro", "nosuid"]},
            {"destination": "/hostname-file", "type": "bind", "source": "/etc/hostname",
             "options": ["bind", "ro"]}]))
    result = minirun("run", str(bundle))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "from the host"
    assert result.stdout.splitlines()[-1] == "touch=1"
    assert not (source / "new").exists()


def test_debug_logs_each_step_without_a_traceback(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sh", "-c", "echo hello"])
    result = minirun("--debug", "run", str(bundle))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"
    steps = [line for line in result.stderr.splitlines() if line.startswith("minirun: step: ")]
    assert any("pivot_root" in step for step in steps), result.stderr
    assert steps[-1].startswith("minirun: step: execve(sh"), steps
    assert "Traceback" not in result.stderr


def test_debug_shows_the_steps_before_a_failed_start(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["/no/such/program"])
    result = minirun("--debug", "run", str(bundle))
    assert result.returncode == 127  # not found, as a shell says it
    steps = [line for line in result.stderr.splitlines() if line.startswith("minirun: step: ")]
    assert steps and steps[-1].startswith("minirun: step: execve(/no/such/program"), steps
    assert re.search(r"^minirun: execve\(/no/such/program.*\): ENOENT", result.stderr, re.M)


def test_spec_refuses_to_overwrite_and_says_how(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = minirun("spec", "-b", str(tmp_path), "--", "sh")
    assert result.returncode == 2
    assert only_line(result.stderr) == (f"minirun: {tmp_path / 'config.json'}: already exists "
                                        "(use --force to overwrite)")
    assert json.loads((tmp_path / "config.json").read_text()) == {}


def test_a_namespaced_sysctl_is_written_with_the_default_read_only_paths(
        make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["cat", "/proc/sys/net/ipv4/ip_forward"],
                         lambda config: config["linux"].update(
                             sysctl={"net.ipv4.ip_forward": "1"}))
    # The sysctl is written before readonlyPaths makes /proc/sys read-only.
    result = minirun("run", str(bundle))
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr


def test_run_as_a_normal_user_says_it_needs_root(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sh", "-c", "touch /ran"])
    for path in [bundle, *bundle.parents]:
        if path == Path("/tmp"):
            break
        path.chmod(0o755)
    before = tree_state(bundle)
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             str(MINIRUN), "run", str(bundle)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert only_line(result.stderr) == "minirun: minirun run needs root (try sudo)"
    assert tree_state(bundle) == before


def test_an_unknown_stage_is_refused_with_the_choices(make_bundle: Callable[..., Path]) -> None:
    result = minirun("run", "--stage", "docker", str(make_bundle(["true"])))
    assert result.returncode == 2
    assert "invalid choice: 'docker'" in result.stderr and "Traceback" not in result.stderr


def test_a_mount_point_that_cannot_be_made_names_its_entry(
        make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["true"], add_mount(destination="/etc/passwd/inside", type="tmpfs",
                                             source="tmpfs"))
    failed_start(bundle, "mounts[7] mount point /etc/passwd/inside: openat2",
                           "ENOTDIR")


def test_a_word_that_is_neither_bundle_image_nor_id_here_is_one_line(tmp_path: Path) -> None:
    result = minirun("run", "nosuchname", cwd=str(tmp_path))
    assert result.returncode == 2
    assert only_line(result.stderr) == (
        "minirun: nosuchname: no such bundle directory or image (and no config.json here to "
        "run it as a container id)")
