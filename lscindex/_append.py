"""Private: what ``embed --append`` adds to a finished zarr store, and the store's next version.

An append keeps every row of the store as it is and adds rows after them: the array grows, the
chunk that held the last rows is filled up, new chunks follow. The header's ``history`` records
the version it grew from (store id, row count, inputs hash), so an index of that version is
brought up to date by adding the rows after its count, and an interrupted append is resumed by the
same command (checked by the chained inputs hash).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any, overload

import pyarrow as pa
import pyarrow.compute as pc

from lscindex._location import Location, read_parquet
from lscindex.errors import StoreError
from lscindex.store import StoreHeader, new_store_id

__all__ = ["AppendedRows", "append_header", "chained_sha256", "check_resumed", "new_items"]


def _stored_ids(path: Location, first: int) -> dict[str, str]:
    """id -> path of the store's rows below ``first`` (the rows from before the append)."""
    parts: list[Location] = list((path / "metadata").glob("part-*.parquet"))
    parts.sort(key=lambda p: p.name)
    if not parts:
        return {}
    table = pa.concat_tables(read_parquet(p, columns=["row", "id", "path"]) for p in parts)
    table = table.filter(pc.less(table.column("row"), first))
    return dict(zip(table.column("id").to_pylist(), table.column("path").to_pylist(), strict=True))


def new_items(path: Location, header: StoreHeader, items: Sequence[Any]) -> tuple[list[Any], int]:
    """(items the store does not hold yet, how many it holds already), in input order.

    An item whose id the store holds for the same path is skipped (embedded before); for
    another path it is refused: ids name a store's rows and must stay unique.

    Raises:
        StoreError: an id the store already holds for another file.
    """
    first = header.appending_from if header.appending_from is not None else header.count
    known = _stored_ids(path, first)
    fresh, skipped = [], 0
    for item in items:
        held = known.get(item.id)
        if held is None:
            fresh.append(item)
        elif held == item.path:
            skipped += 1
        else:
            raise StoreError(
                f"{item.path} has id {item.id!r}, which store {path} already holds for {held}; "
                f"ids name the rows and must be unique: give the new images other ids (a "
                f"manifest's id column) or embed them into another store"
            )
    return fresh, skipped


def chained_sha256(previous: str, items_sha256: str) -> str:
    """The inputs hash of a grown store: its previous inputs hash followed by the new items'."""
    return hashlib.sha256(f"{previous}\n{items_sha256}".encode()).hexdigest()


def append_header(header: StoreHeader, n_new: int, items_sha256: str) -> StoreHeader:
    """The next version of a finished store, ``n_new`` rows longer, not yet complete."""
    before = {
        "store_id": header.store_id,
        "count": header.count,
        "inputs_sha256": header.inputs_sha256,
    }
    return dataclasses.replace(
        header,
        store_id=new_store_id(),
        count=header.count + n_new,
        inputs_sha256=chained_sha256(header.inputs_sha256, items_sha256),
        complete=False,
        history=(*header.history, before),
    )


def check_resumed(path: Location, header: StoreHeader, n_new: int, items_sha256: str) -> None:
    """Refuse to resume an unfinished append with other inputs than the ones it started with.

    Raises:
        StoreError: the new items differ from those of the unfinished append.
    """
    before = header.history[-1]
    same = header.count == before["count"] + n_new and header.inputs_sha256 == chained_sha256(
        before["inputs_sha256"], items_sha256
    )
    if not same:
        added = header.count - before["count"]
        raise StoreError(
            f"store {path} has an unfinished append of other images ({added:,} rows after row "
            f"{before['count']:,}); run that embed --append command again to finish it first"
        )


class AppendedRows(Sequence[Any]):
    """The items of a grown store by row: rows from ``first`` on are ``items``; the rows before
    them are in the store already and are never asked for."""

    def __init__(self, first: int, items: Sequence[Any]) -> None:
        self.first, self.items = first, items

    def __len__(self) -> int:
        return self.first + len(self.items)

    @overload
    def __getitem__(self, row: int) -> Any: ...
    @overload
    def __getitem__(self, row: slice) -> Sequence[Any]: ...
    def __getitem__(self, row: int | slice) -> Any:
        if isinstance(row, slice) or row < self.first:
            raise IndexError(f"row {row} is not one of the appended rows (from {self.first})")
        return self.items[row - self.first]
