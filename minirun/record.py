"""Small immutable value classes, made without the dataclasses module.

minirun often lives for a few milliseconds. The dataclasses module (with inspect, which it
imports) and the code it compiles for every class cost about a fifth of a run's start-up, so
the classes on the run path use ``@record`` instead: it gives a class what minirun used of
``@dataclass(frozen=True)`` — an ``__init__`` taking the annotated fields in order, with
defaults from class attributes; read-only attributes; equality, hashing and a repr — through
plain closures. mypy checks such classes as frozen dataclasses (dataclass_transform).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs start-up time; mypy still reads this
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from typing_extensions import dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**options):
        return lambda decorator: decorator


@dataclass_transform(frozen_default=True)
def record(cls: type[T]) -> type[T]:
    # Only the class's own annotations: records do not inherit from one another.
    fields: tuple[str, ...] = tuple(vars(cls).get("__annotations__", {}))
    defaults = {name: vars(cls)[name] for name in fields if name in vars(cls)}
    name = cls.__name__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(fields):
            raise TypeError(f"{name}() takes {len(fields)} arguments, got {len(args)}")
        values = dict(zip(fields, args, strict=False))  # fewer args: the rest by keyword
        for key, value in kwargs.items():
            if key not in fields or key in values:
                raise TypeError(f"{name}(): unexpected or repeated argument {key!r}")
            values[key] = value
        for field in fields:
            if field in values:
                object.__setattr__(self, field, values[field])
            elif field in defaults:
                object.__setattr__(self, field, defaults[field])
            else:
                raise TypeError(f"{name}() is missing the argument {field!r}")

    def __setattr__(self: Any, key: str, value: Any) -> None:
        raise AttributeError(f"{name} is immutable: cannot set {key!r}")

    def _values(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, field) for field in fields)

    def __eq__(self: Any, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bool(_values(self) == _values(other))

    def __hash__(self: Any) -> int:
        return hash(_values(self))

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{field}={getattr(self, field)!r}" for field in fields)
        return f"{name}({inner})"

    for method in (__init__, __setattr__, __eq__, __hash__, __repr__):
        setattr(cls, method.__name__, method)
    cls._fields = fields  # type: ignore[attr-defined]
    return cls


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record ``obj`` with some fields changed."""
    fields: tuple[str, ...] = obj._fields  # type: ignore[attr-defined]
    return type(obj)(**{field: changes.get(field, getattr(obj, field)) for field in fields})
