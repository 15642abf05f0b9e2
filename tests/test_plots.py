"""lscindex.plots: the training-curve figure of one or several runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import make_plot_run as make_run
from helpers import run_cli

from lscindex.errors import RunError
from lscindex.plots import LOSS_AXES, create_figure, plot_runs


def axis(fig: Any, title: str) -> Any:
    (found,) = [ax for ax in fig.axes if ax.get_title() == title]
    return found


def labels(ax: Any) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def test_an_lsc_and_a_ce_run_get_one_loss_axis_each(tmp_path: Path) -> None:
    lsc = make_run(tmp_path, "v21", "lsc", 3)
    ce = make_run(tmp_path, "softmax", "ce", 2)
    fig = create_figure([lsc, ce])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        LOSS_AXES["lsc"][0],
        LOSS_AXES["ce"][0],
        "validation accuracy",
        "learning rate (end of epoch)",
    ]
    lsc_ax, ce_ax, acc_ax, lr_ax = fig.axes
    assert lsc_ax.get_ylabel() == "1 - cos" and ce_ax.get_ylabel() == "nats"
    assert labels(lsc_ax) == ["v21 train", "v21 val"]
    assert labels(ce_ax) == ["softmax train", "softmax val"]
    assert labels(acc_ax) == ["v21 top-1", "v21 top-5", "softmax top-1", "softmax top-5"]
    assert labels(lr_ax) == ["v21", "softmax"]
    assert list(lr_ax.get_lines()[0].get_ydata()) == [1e-3, 1e-3 / 2, 1e-3 / 3]
    assert list(ce_ax.get_lines()[0].get_ydata()) == [3.0, 1.5]
    # each run keeps one colour in every panel, and the two runs' colours differ
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    colours = [
        {line.get_color() for line in lines if line.get_label().split()[0] == name}
        for name in ("v21", "softmax")
    ]
    assert [len(c) for c in colours] == [1, 1] and colours[0] != colours[1]


def test_a_single_epoch_run_shows_every_point(tmp_path: Path) -> None:
    fig = create_figure([make_run(tmp_path, "one", "lsc", 1)])
    assert len(fig.axes) == 3  # one loss type: one loss axis
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 5  # train, val loss; top-1, top-5; lr
    for line in lines:
        assert len(line.get_xdata()) == 1
        assert line.get_marker() not in (None, "", "None", " "), line.get_label()


def test_a_run_without_validation_draws_train_loss_and_lr_only(tmp_path: Path) -> None:
    fig = create_figure([make_run(tmp_path, "noval", "ce", 2, val=False)])
    assert labels(axis(fig, LOSS_AXES["ce"][0])) == ["noval train"]
    assert labels(axis(fig, "validation accuracy")) == []
    assert labels(axis(fig, "learning rate (end of epoch)")) == ["noval"]


def test_plot_errors_name_the_run(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="at least one run"):
        create_figure([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"empty has no metrics\.jsonl"):
        plot_runs([tmp_path / "empty"], tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_cli_plot_draws_an_lsc_and_a_ce_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [make_run(tmp_path, "v21", "lsc", 2), make_run(tmp_path, "softmax", "ce", 2)]
    out = tmp_path / "curves.png"
    code, stdout, _ = run_cli(["plot", *map(str, runs), "--out", str(out)], capsys)
    assert code == 0 and "curves.png" in stdout
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
