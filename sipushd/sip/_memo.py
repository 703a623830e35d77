"""A bounded memo for the parsers' results, which are immutable.

To, From, Contact and Route values repeat across requests (registration refreshes,
in-dialog requests), so the parsers keep recent results by their input text. When
full, the memo starts over rather than tracking recency: an LRU's bookkeeping (and,
in the compiled build, `functools.lru_cache`'s generic call into the parser) would
cost more than it saves on inputs seen once.
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")

__all__ = ["Memo"]


class Memo(Generic[V]):
    """At most `size` results by input text."""

    __slots__ = ("_found", "_size")

    def __init__(self, size: int) -> None:
        self._found: dict[str, V] = {}
        self._size = size

    def get(self, text: str) -> V | None:
        """The result kept for `text`, or None."""
        return self._found.get(text)

    def put(self, text: str, result: V) -> V:
        """Keep `result` for `text` and return it."""
        if len(self._found) >= self._size:
            self._found.clear()
        self._found[text] = result
        return result

    def __len__(self) -> int:
        return len(self._found)
