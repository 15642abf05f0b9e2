"""lscindex_cli: commands run end to end; errors are one line with exit status 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lscindex_cli.main import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_systems_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["systems", "--classes", "600000"], capsys)
    assert code == 0
    assert "v21" in out and "108" in out and "612,468" in out
    assert "231,000,000 params" in out


def test_systems_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        ["systems", "-n", "1000", "--kind", "v21", "--kind", "an", "--json"], capsys
    )
    assert code == 0
    data = json.loads(out)
    assert [(r["kind"], r["dim"]) for r in data["systems"]] == [("v21", 14), ("v11", 33)]
    assert data["systems"][0]["target_matrix_bytes"] == 1000 * 14 * 4
    assert data["softmax_head"]["params"] == 1000 * 385


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["systems", "--classes", "0"], "n_classes must be >= 1, got 0"),
        (["systems", "--classes", "10", "--kind", "v9"], "unknown vector system kind 'v9'"),
        (
            ["train", "data", "--assignment", "random"],
            "assignment must be 'codec' or 'data', got 'random'",
        ),
        (["train", "data", "--rematch-until", "2"], "rematch_until is a share of the training"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from lscindex.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "systems", "--classes", "0"])


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(["systems"], capsys)
    assert code == 2


def test_console_script_runs() -> None:
    exe = subprocess.run(
        [sys.executable, "-m", "lscindex_cli.main", "systems", "-n", "50", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(exe.stdout)["n_classes"] == 50


def test_library_never_imports_the_cli() -> None:
    code = (
        "import sys, lscindex; "
        "bad = [m for m in ('typer', 'rich', 'click', 'lscindex_cli') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_train_then_plot_through_the_cli(
    image_folder, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    common = ["--model", "test_resnet", "--epochs", "1", "--batch-size", "16", "--workers", "0"]
    for name, extra in (("lsc", []), ("ce", ["--head", "ce"])):
        code, out, err = run_cli(
            ["train", str(image_folder), "--out", str(tmp_path / name), *common, *extra], capsys
        )
        assert code == 0, err
        assert "val top-1" in out and f"run saved in {tmp_path / name}" in out
    png = tmp_path / "both.png"
    code, out, _ = run_cli(
        ["plot", str(tmp_path / "lsc"), str(tmp_path / "ce"), "--out", str(png)], capsys
    )
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dim", "abc"], "--dim must be 'auto' or a positive integer, got 'abc'"),
        (["--dim", "2"], "dim 2 holds 0 vectors"),
        (["--model", "resnet1888"], "unknown timm model 'resnet1888'"),
    ],
)
def test_train_bad_input_is_one_line(
    args: list[str], message: str, image_folder, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run_cli(
        ["train", str(image_folder), "--out", str(tmp_path / "r"), *args], capsys
    )
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_plot_of_a_folder_without_metrics(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run_cli(["plot", str(tmp_path)], capsys)
    assert code == 1 and "has no metrics.jsonl" in err
