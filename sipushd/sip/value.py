"""`Value`: the base of immutable value classes built on every message.

A frozen dataclass would say the same in fewer lines, but the compiled build
(see setup.py) constructs a dataclass through its generated Python `__init__`,
with one `object.__setattr__` per field: about ten times the cost of a plain
class whose `__init__` sets `Final` attributes. So the hot value types (URIs,
name-addrs, Vias, messages, bindings, transaction inputs and actions) are plain
classes that list their fields in `_FIELDS` and get from here what the
dataclass would have generated: equality, hash and repr over those fields, and
`replace()`. `Final` makes mypy reject any assignment after `__init__`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

__all__ = ["Value"]


class Value:
    """Equality, hash, repr and `replace()` over the fields named in `_FIELDS`.

    A subclass sets every field in `__init__`, whose parameters carry the field
    names, and keeps anything derived (caches, precomputed hashes) out of `_FIELDS`.
    """

    __slots__ = ()
    _FIELDS: ClassVar[tuple[str, ...]] = ()

    def _parts(self) -> tuple[object, ...]:
        return tuple([getattr(self, name) for name in self._FIELDS])

    def as_dict(self) -> dict[str, object]:
        """The fields by name (as `dataclasses.asdict` would give, one level deep)."""
        return {name: getattr(self, name) for name in self._FIELDS}

    def replace(self, **changes: Any) -> Self:
        """A copy with the given fields changed (as `dataclasses.replace` would)."""
        unknown = changes.keys() - set(self._FIELDS)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]!r}")
        values = self.as_dict()
        values.update(changes)
        return type(self)(**values)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)
        return self._parts() == other._parts()

    def __hash__(self) -> int:
        return hash(self._parts())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"{type(self).__name__}({shown})"
