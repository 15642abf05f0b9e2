"""ClassNames and its JSON reader/writer against the json module as the reference."""

from __future__ import annotations

import json
import pickle

import pytest

from lscindex._class_names import ClassNames, names_json_bytes, parse_names_json

NAMES = ["A DejaVuSans", "一 NotoSansCJK", 'quote " and \\ slash', "", "tab\there", "é"]


def test_sequence_behaviour():
    names = ClassNames(NAMES)
    assert len(names) == len(NAMES)
    assert [names[i] for i in range(len(NAMES))] == NAMES
    assert names[-1] == NAMES[-1]
    assert list(names) == NAMES
    assert names == NAMES and names != NAMES[:-1]
    assert NAMES == names  # noqa: SIM300 (the list on the left: the reflected comparison)
    assert list(names[1:4]) == NAMES[1:4] and list(names[::2]) == NAMES[::2]
    assert names.index("é") == NAMES.index("é") and "tab\there" in names
    with pytest.raises(IndexError, match="out of range for 6 classes"):
        names[6]
    assert pickle.loads(pickle.dumps(names)) == names


def test_iteration_crosses_blocks():
    many = [f"class {i}" for i in range(40_000)]  # more than one block of names
    names = ClassNames(many)
    assert list(names) == many
    assert names[-1] == "class 39999"


@pytest.mark.parametrize("names", [NAMES, [], ["one"], [f"c{i}" for i in range(20_000)]])
def test_json_bytes_equal_json_dumps(names):
    expected = (json.dumps(names, indent=2) + "\n").encode()
    assert names_json_bytes(names) == expected
    assert names_json_bytes(ClassNames(names)) == expected


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(NAMES),
        json.dumps(NAMES, indent=2),
        json.dumps(NAMES, ensure_ascii=False),
        " [ ] ",
        '["a"]\n',
    ],
)
def test_parse_equals_json_loads(text):
    parsed = parse_names_json(text)
    assert parsed is not None
    assert list(parsed) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    ["", "{}", '"a"', "[1, 2]", '["a", null]', '["a",]', '["a" "b"]', '["a"] x', "[", '["a"'],
)
def test_parse_refuses_what_is_not_a_list_of_strings(text):
    assert parse_names_json(text) is None


def test_refuses_non_strings():
    with pytest.raises(TypeError, match="nulls"):
        ClassNames(["a", None])  # type: ignore[list-item]
