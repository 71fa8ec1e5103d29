"""Getting root file systems: images from files, verified, safely unpacked, turned into bundles.

Modules (each imported only by the command that needs it, to keep ``minirun run`` fast):

* :mod:`rootfs_fetch.digest`   digest grammar and hashing readers that check size and content
* :mod:`rootfs_fetch.safepath` openat2(RESOLVE_IN_ROOT) and friends: paths that stay inside
* :mod:`rootfs_fetch.source`   OCI layouts, oci-archive and docker-save tars, platform choice
* :mod:`rootfs_fetch.unpack`   layer tar streams into a rootfs (flattened or one dir per layer)
* :mod:`rootfs_fetch.convert`  image config -> runtime config.json (image-spec conversion.md)
* :mod:`rootfs_fetch.store`    content store of unpacked layers for overlayfs
* :mod:`rootfs_fetch.commands` ``minirun unpack``, ``images`` and ``rmi``
"""
