"""One module per isolation mechanism; each is usable on its own.

Every module names what the kernel isolates, the man page that explains it and the stage
that introduced it. All system calls go through :mod:`minirun.isolation.syscalls`.
"""
