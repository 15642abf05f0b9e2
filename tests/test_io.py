"""lscindex._io: atomic file writes, folder swaps, file digests."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from lscindex import _io


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    _io.atomic_write_json(target, {"a": 1})
    _io.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["x.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    _io.atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        _io.atomic_write_bytes(target, object())  # type: ignore[arg-type]
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_swap_dir_replaces_a_folder_whole(tmp_path: Path) -> None:
    final, new = tmp_path / "out", tmp_path / "new"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    _io.swap_dir(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left aside


def test_swap_dir_into_a_free_path(tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    _io.swap_dir(new, tmp_path / "out")
    assert (tmp_path / "out").is_dir() and not new.exists()


def test_swap_dir_puts_the_old_folder_back_when_the_new_one_is_missing(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(OSError):
        _io.swap_dir(tmp_path / "missing", final)
    assert (final / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_file_sha256_of_one_and_of_several_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (3 << 20))  # several read blocks
    b.write_bytes(b"yz")
    assert _io.file_sha256(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    both = hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()
    assert _io.file_sha256([a, b]) == both


def test_swap_dir_exchanges_atomically_where_the_kernel_can(tmp_path: Path) -> None:
    # on Linux both folders exist at every instant; the old one ends up removed
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "new").write_text("1")
    (b / "old").write_text("2")
    assert _io._exchange(a, b)
    assert (a / "old").exists() and (b / "new").exists()
    _io.swap_dir(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert (b / "old").exists()


def test_swap_dir_falls_back_to_two_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_io, "_exchange", lambda a, b: False)
    final, new = tmp_path / "out", tmp_path / "new"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    _io.swap_dir(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_with_a_writer_that_fails_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def half(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        _io.atomic_write_with(target, half)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]
    _io.atomic_write_with(target, lambda tmp: tmp.write_bytes(b"new"))
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["x.bin"]
