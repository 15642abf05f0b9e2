"""Class names held compactly: one Arrow string array, not a Python string per class.

At 600,000 classes a list of Python strings costs ~70 MiB to hold and twice that to parse from
JSON; the same names in an Arrow array take their UTF-8 bytes plus 4 bytes of offset each
(~10 MiB for "A DejaVuSans"-like names). :class:`ClassNames` is a read-only ``Sequence[str]``
over such an array, read from and written to the JSON list lscindex stores class names in,
one name at a time, so no list of all of them ever exists.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import pyarrow as pa

__all__ = ["ClassNames", "names_json_bytes", "parse_names_json"]

# Names turned into Python strings at a time when iterating or writing.
_BLOCK = 1 << 14
_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


class ClassNames(Sequence[str]):
    """An immutable sequence of class names over a ``pa.StringArray``.

    Indexing gives ``str``; a slice gives another :class:`ClassNames`; it compares equal to any
    sequence with the same strings in the same order.

    Example:
        >>> names = ClassNames(["cat", "dog"])
        >>> names[1], len(names), list(names) == ["cat", "dog"]
        ('dog', 2, True)
    """

    __slots__ = ("_array",)

    def __init__(self, names: Iterable[str] | pa.Array, *, size: int | None = None) -> None:
        if isinstance(names, pa.ChunkedArray):
            names = names.combine_chunks()
        if not isinstance(names, pa.Array):
            names = pa.array(names, type=pa.string(), size=size)
        if not (pa.types.is_string(names.type) or pa.types.is_large_string(names.type)):
            raise TypeError(f"class names must be strings, got an array of {names.type}")
        if names.null_count:
            raise TypeError(f"class names must be strings, got {names.null_count:,} nulls")
        self._array: pa.Array = names

    @property
    def array(self) -> pa.Array:
        """The names as an Arrow string array (no copy)."""
        return self._array

    def __len__(self) -> int:
        return len(self._array)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> ClassNames: ...

    def __getitem__(self, index: int | slice) -> str | ClassNames:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self._array))
            if step == 1:
                return ClassNames(self._array.slice(start, max(stop - start, 0)))
            return ClassNames(self._array.take(pa.array(range(start, stop, step))))
        n = len(self._array)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(f"class index {index} out of range for {n:,} classes")
        return str(self._array[i].as_py())

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self._array), _BLOCK):
            yield from self._array.slice(start, _BLOCK).to_pylist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ClassNames):
            return self._array.equals(other._array)
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(repr(n) for n in self[:3])
        return f"ClassNames([{shown}{', ...' if len(self) > 3 else ''}], {len(self):,} names)"

    def __reduce__(self) -> tuple[Any, ...]:  # DataLoader workers may be spawned
        return (ClassNames, (self._array,))


def parse_names_json(text: str) -> ClassNames | None:
    """The JSON list of strings ``text`` as :class:`ClassNames`, parsed one name at a time.

    Returns None when ``text`` is not a JSON list of strings (the caller says why it needs one).
    """
    strings = _json_strings(text)
    try:
        # Block by block: pa.array would first gather a whole iterator into a list of all the
        # Python strings (~70 MiB at 600k names).
        blocks = [pa.array(block, type=pa.string()) for block in _blocks(strings)]
        return ClassNames(pa.chunked_array(blocks, type=pa.string()))
    except (ValueError, TypeError, pa.ArrowException):
        return None


def _blocks(items: Iterator[str]) -> Iterator[list[str]]:
    while block := list(itertools.islice(items, _BLOCK)):
        yield block


def _json_strings(text: str) -> Iterator[str]:
    """The items of the JSON array ``text``; ValueError if it is not one, TypeError for an item
    that is not a string."""
    i = _skip(text, 0)
    if not text.startswith("[", i):
        raise ValueError("not a JSON list")
    i = _skip(text, i + 1)
    if text.startswith("]", i):
        if _skip(text, i + 1) != len(text):
            raise ValueError("extra data after the list")
        return
    while True:
        value, i = _DECODER.raw_decode(text, i)
        if not isinstance(value, str):
            raise TypeError(f"a list item is {type(value).__name__}, not a string")
        yield value
        i = _skip(text, i)
        if text.startswith("]", i):
            if _skip(text, i + 1) != len(text):
                raise ValueError("extra data after the list")
            return
        if not text.startswith(",", i):
            raise ValueError(f"expected ',' at character {i}")
        i = _skip(text, i + 1)


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SPACE:
        i += 1
    return i


def names_json_bytes(names: Sequence[str]) -> bytes:
    """``names`` as the indented JSON list lscindex writes (the bytes of
    ``json.dumps(list(names), indent=2) + "\\n"``), built a block of names at a time."""
    if not len(names):
        return b"[]\n"
    parts = [b"[\n  "]
    for start in range(0, len(names), _BLOCK):
        block = names[start : start + _BLOCK]
        if start:
            parts.append(b",\n  ")
        parts.append(",\n  ".join(json.dumps(str(n)) for n in block).encode())
    parts.append(b"\n]\n")
    return b"".join(parts)
