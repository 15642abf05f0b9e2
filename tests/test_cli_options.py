"""lscindex_cli options: --version, completion, -j, checked choices, plain help text, --debug."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from helpers import run_cli

from lscindex.errors import LscIndexError
from lscindex.training.config import SCHEDULES
from lscindex_cli.main import app, main


def command(*path: str) -> Any:
    found = typer.main.get_command(app)
    for name in path:
        found = found.commands[name]
    return found


def one_line(err: str) -> str:
    """The one line of a usage or input error on stderr (fails on more, or on a traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def help_text(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run_cli([*args, "--help"], capsys)
    assert code == 0, err
    return out


@pytest.fixture(autouse=True)
def wide_help(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one row per option in --help


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["--version"], capsys)
    assert code == 0 and err == ""
    assert out == f"lscindex {importlib.metadata.version('lscindex')}\n"


# -- shell completion ---------------------------------------------------------------------------
def test_completion_options_are_offered(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_text([], capsys)
    assert "--install-completion" in out and "--show-completion" in out
    # typer detects the shell from the process tree: run it from bash, as a user would (the
    # second command keeps bash from exec'ing lscindex in its place)
    lscindex = Path(sys.executable).parent / "lscindex"
    proc = subprocess.run(
        ["bash", "-c", f"'{lscindex}' --show-completion; exit $?"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0 and "_LSCINDEX_COMPLETE=complete_bash" in proc.stdout, proc.stderr


def complete(words: str) -> list[str]:
    """What bash completion offers for the last (partial) word of ``words``."""
    env = {
        **os.environ,
        "_LSCINDEX_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
    }
    cmd = [sys.executable, "-m", "lscindex_cli.main"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_completion_completes_commands_and_choices() -> None:
    assert complete("lscindex tr") == ["train"]
    assert complete("lscindex data gl") == ["glyphs"]
    assert complete("lscindex train data --head ") == ["lsc", "ce"]
    assert complete("lscindex embed x --dtype float") == ["float16", "float32"]


# -- -j -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [("train",), ("embed",), ("data", "glyphs")])
def test_j_is_short_for_workers(path: tuple[str, ...]) -> None:
    (workers,) = [p for p in command(*path).params if p.name == "workers"]
    assert set(workers.opts) == {"--workers", "-j"}


# -- options with a fixed set of values ---------------------------------------------------------
BAD_CHOICES = [
    (["train", "d", "--head", "lsx"], "--head", "'lsx'", ["lsc", "ce"]),
    (["train", "d", "--assignment", "random"], "--assignment", "'random'", ["codec", "data"]),
    (["train", "d", "--sched", "cosin"], "--sched", "'cosin'", list(SCHEDULES)),
    (["train", "d", "--device", "gpu"], "--device", "'gpu'", ["auto", "cpu", "cuda", "cuda:N"]),
    (["train", "d", "--device", "cuda:x"], "--device", "'cuda:x'", ["cuda:N"]),
    (["embed", "x", "--run", "r", "--out", "o", "--dtype", "f16"], "--dtype", "'f16'",
     ["float16", "float32"]),
    (["embed", "x", "--run", "r", "--out", "o", "--device", "tpu"], "--device", "'tpu'",
     ["auto", "cpu", "cuda", "cuda:N"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "option", "bad", "valid"), BAD_CHOICES)
def test_a_bad_choice_is_one_usage_line_listing_the_valid_ones(
    args: list[str], option: str, bad: str, valid: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(args, capsys)
    line = one_line(err)
    assert code == 2 and f"'{option}'" in line and bad in line
    listed = re.search(r"is not one of (.*)$", line)
    assert listed is not None and set(valid) <= set(listed.group(1).split(", "))


def test_a_misspelt_optimizer_gets_close_names_and_where_the_list_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(["train", "d", "--opt", "adamm"], capsys)
    line = one_line(err)
    assert code == 2 and "'adamm'" in line and "timm.optim.list_optimizers()" in line
    assert "did you mean" in line and "adamw" in line
    code, _, err = run_cli(["train", "d", "--opt", "qqqqq"], capsys)
    assert code == 2 and "timm.optim.list_optimizers()" in one_line(err)


@pytest.mark.parametrize(
    "args",
    [
        ["--device", "cuda:0"],  # select_device takes cuda:N
        ["--opt", "Lookahead_AdamW"],  # timm reads names case-insensitively, lookahead_ wrapped
        ["--sched", "rsqrt", "--head", "ce", "--assignment", "codec"],
        ["--sched", "plateau"],  # a timm schedule: TrainConfig refuses it and says why
        ["--opt", "adahessian"],  # a timm optimizer: TrainConfig refuses it and says why
    ],
)
def test_good_choices_pass_the_command_line(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The command line accepts them; the run then fails on its missing data (or on a machine
    # without CUDA, or in TrainConfig), as one line with exit status 1, not 2.
    code, _, err = run_cli(["train", str(tmp_path / "missing"), *args], capsys)
    assert code == 1 and "Invalid value" not in one_line(err)


def test_help_lists_short_choice_lists_only(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_text(["train"], capsys)
    assert "<lsc|ce>" in out and "<codec|data|features>" in out and "<auto|cpu|cuda|cuda:N>" in out
    assert "timm.optim.list_optimizers()" in out and "adabelief" not in out
    assert "<float16|float32>" in help_text(["embed"], capsys)


# -- help text ----------------------------------------------------------------------------------
def test_help_shows_brackets_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    assert "ImageFolder (train/ [val/])" in help_text(["train"], capsys)


def leaf_commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not hasattr(cmd, "commands"):
        return [path]
    return [p for name, sub in cmd.commands.items() for p in leaf_commands(sub, (*path, name))]


def test_flags_show_no_value_type(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [(), ("data",), *leaf_commands(command())]
    assert ("query",) in paths and ("verify",) in paths and ("systems",) in paths
    for path in paths:
        out = help_text(list(path), capsys)
        assert "--help" in out and "<bool>" not in out, path
    assert re.search(r"--json\s+Print JSON", help_text(["systems"], capsys))


def test_json_is_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["systems", "-n", "1000", "--json"], capsys)
    assert code == 0 and json.loads(out)["n_classes"] == 1000
    code, _, err = run_cli(["systems", "-n", "1000", "--json", "true"], capsys)
    assert code == 2 and "true" in one_line(err)


# -- usage errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["systems"], "Missing option '--classes'"),
        (["train", "d", "--nope"], "--nope"),
        (["train", "d", "--log-interval", "0"], "--log-interval"),
        (["data", "glyphs"], "Missing argument"),
        (["nope"], "nope"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == 2 and needle in one_line(err)


def test_no_arguments_shows_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli([], capsys)
    assert code == 2 and "Commands" in out + err and "error" not in err


# -- --debug in the data group ------------------------------------------------------------------
def glyph_args(tmp_path: Path) -> list[str]:
    return ["glyphs", str(tmp_path / "out"), "--fonts", str(tmp_path / "no-fonts")]


def test_data_debug_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["data", *glyph_args(tmp_path)], capsys)
    assert code == 1 and "no-fonts" in one_line(err)
    for args in (
        ["data", "--debug", *glyph_args(tmp_path)],
        ["data", *glyph_args(tmp_path), "--debug"],
        ["--debug", "data", *glyph_args(tmp_path)],
    ):
        with pytest.raises(LscIndexError, match="no-fonts"):
            main(args)
