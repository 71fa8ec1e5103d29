"""minirun: a container runtime that builds isolation up in the order history did."""

__version__ = "0.1.0"
