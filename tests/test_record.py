"""minirun.record: the frozen value classes of the run path (no root needed)."""

from __future__ import annotations

import pytest
import support  # noqa: F401  (puts the checkout on sys.path)

from minirun.record import record, replace


@record
class Point:
    x: int
    y: int = 0
    label: str = "p"


def test_fields_defaults_keywords_and_repr() -> None:
    point = Point(1, label="a")
    assert (point.x, point.y, point.label) == (1, 0, "a")
    assert repr(point) == "Point(x=1, y=0, label='a')"


def test_records_are_immutable_values() -> None:
    point = Point(1, 2)
    with pytest.raises(AttributeError, match="immutable"):
        point.x = 3  # type: ignore[misc]
    assert point == Point(1, 2) and point != Point(2, 1)
    assert len({Point(1, 2), Point(1, 2)}) == 1


def test_replace_changes_only_what_it_names() -> None:
    assert replace(Point(1, 2, "a"), y=5) == Point(1, 5, "a")


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((), {}, "missing the argument 'x'"),
    ((1, 2, "a", 4), {}, "takes 3 arguments"),
    ((1,), {"x": 2}, "repeated argument 'x'"),
    ((1,), {"z": 2}, "unexpected or repeated argument 'z'"),
])
def test_wrong_arguments_are_refused(args: tuple[object, ...], kwargs: dict[str, object],
                                     message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)
