"""``minirun unpack``, ``minirun images`` and ``minirun rmi``: argument set-up and commands.

Kept import-light (argparse and functools only at the top; not even typing or pathlib, which
minirun's start-up does not load otherwise) so that building minirun's parser costs nothing;
each command imports what it needs when it runs. Errors are raised as
minirun.errors classes for the command line to print.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

_DEFAULT_STORE = "/var/lib/minirun"
_IMAGE_HELP = ("a path to an OCI layout directory, an oci-archive tar or a docker-save tar; "
               "oci:PATH[:TAG], oci-archive:PATH[:TAG] and docker-archive:PATH[:NAME:TAG] too")


def add_unpack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help=_IMAGE_HELP)
    parser.add_argument("bundle", metavar="BUNDLE",
                        help="directory to write config.json and rootfs/ into")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                        help="image to pick from a multi-platform index (default: this host)")
    parser.add_argument("--keep-devices", action="store_true",
                        help="make the device nodes the layers contain (skipped by default)")
    parser.add_argument("--keep-setuid", action="store_true",
                        help="keep setuid/setgid bits and file capabilities (removed by default)")


def _os_errors_named(command: Callable[..., int]) -> Callable[..., int]:
    """An OSError that escapes (a bundle path that cannot be made, a full disk) becomes one
    line naming the file, like every other error, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> int:
        from minirun.errors import MiniRunError

        try:
            return command(*args, **kwargs)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise MiniRunError(f"{where}{exc.strerror or exc}") from exc

    return wrapper


@_os_errors_named
def unpack_command(args: argparse.Namespace) -> int:
    """Unpack IMAGE into BUNDLE/rootfs and write BUNDLE/config.json from its config."""
    import json
    import logging
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from minirun.errors import MiniRunError

    from .convert import base_config, convert
    from .source import open_image, parse_platform, verify_image
    from .unpack import Options, is_empty_dir, unpack_image

    log = logging.getLogger(__name__)
    bundle = Path(args.bundle)
    rootfs = bundle / "rootfs"
    if not is_empty_dir(rootfs):
        raise MiniRunError(f"{rootfs} exists and is not empty; refusing to unpack over it",
                           "choose a new BUNDLE or remove the old rootfs")
    platform = parse_platform(args.platform) if args.platform else None
    options = Options(keep_devices=args.keep_devices, keep_setuid=args.keep_setuid)
    from .progress import LayerProgress

    with LayerProgress(), open_image(args.image, platform) as image:
        # Every digest, size and diff_id is checked before the bundle is touched.
        verify_image(image)
        bundle.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".rootfs-", dir=bundle))
        try:
            os.chmod(staging, 0o755)
            stats = unpack_image(image, staging, options, verify=False)
            config = convert(image.config, base_config(), staging, where=f"{args.image} config")
            if rootfs.is_dir():
                rootfs.rmdir()
            os.rename(staging, rootfs)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    tmp_config = bundle / ".config.json.tmp"
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    os.rename(tmp_config, bundle / "config.json")
    log.info("%s: %d layers, %d files, %d bytes", args.image, len(image.layers), stats.files,
             stats.bytes)
    print(f"unpacked {args.image} ({len(image.layers)} layers, {stats.files} files) "
          f"into {bundle}")
    return 0


def add_images_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=_DEFAULT_STORE, help="content store directory")
    parser.add_argument("--efficiency", metavar="IMAGE",
                        help="instead of listing, report the wasted bytes of IMAGE's layers")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                        help="with --efficiency: image to pick from a multi-platform index")


@_os_errors_named
def images_command(args: argparse.Namespace) -> int:
    if args.efficiency:
        return _efficiency_command(args)
    from pathlib import Path

    from .store import images

    rows = images(Path(args.store))
    print(f"{'IMAGE ID':<14}{'LAYERS':>7}{'SIZE':>12}  REFERENCE")
    for info in rows:
        print(f"{info.id.removeprefix('sha256:')[:12]:<14}{len(info.layers):>7}"
              f"{_human(info.size):>12}  {info.reference}")
    return 0


def _efficiency_command(args: argparse.Namespace) -> int:
    from .efficiency import efficiency
    from .source import open_image, parse_platform

    platform = parse_platform(args.platform) if args.platform else None
    with open_image(args.efficiency, platform) as image:
        report = efficiency(image)
    print(f"{'LAYER':<7}{'FILES':>8}{'SIZE':>12}{'WASTED':>12}  DIFF_ID")
    for layer in report.layers:
        print(f"{layer.index:<7}{layer.files:>8}{_human(layer.size):>12}"
              f"{_human(layer.wasted):>12}  {layer.diff_id[:19]}")
    print(f"total {_human(report.size)}, wasted {_human(report.wasted)}, "
          f"efficiency {report.score:.2%}")
    return 0


def add_rmi_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image_id", metavar="IMAGE_ID",
                        help="image id, a unique prefix of it, or a reference")
    parser.add_argument("--store", default=_DEFAULT_STORE, help="content store directory")


@_os_errors_named
def rmi_command(args: argparse.Namespace, in_use: frozenset[str] = frozenset()) -> int:
    """``in_use``: ids of images that containers still run on (the runtime knows them)."""
    from pathlib import Path

    from .store import rmi

    removed = rmi(Path(args.store), args.image_id, set(in_use))
    print(f"removed {args.image_id}; {len(removed)} layers freed")
    return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
