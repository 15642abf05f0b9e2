"""lscindex_cli._progress: plain progress lines in logs (rate, whole-job ETA), bars on terminals.

The CLI runs here write to pytest's captured stdout, which is not a terminal: the plain mode a
log file or CI gets.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli
from rich.console import Console

from lscindex_cli import _progress
from lscindex_cli._progress import Reporter, WorkClock, format_duration

LINE = re.compile(
    r"^(?P<label>[^:|]+): (?P<done>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\w+) \((?P<pct>\d+)%\)"
    r" \| (?P<rate>[\d,.]+|\?) (?P<rate_unit>\S+)"
    r" \| elapsed (?P<elapsed>\d+:\d\d:\d\d)"
    r" \| eta (?P<eta>\d+:\d\d:\d\d|\?)"
    r"(?: \| (?P<extra>.+))?$"
)


def progress_lines(text: str, label: str) -> list[dict[str, Any]]:
    """The progress lines of ``text`` whose label starts with ``label``, parsed."""
    found = []
    for line in text.splitlines():
        match = LINE.match(line)
        if match and match["label"].startswith(label):
            row: dict[str, Any] = match.groupdict()
            row["done"], row["total"] = (
                int(row["done"].replace(",", "")),
                int(row["total"].replace(",", "")),
            )
            found.append(row)
    return found


def seconds(duration: str) -> int:
    hours, minutes, secs = (int(part) for part in duration.split(":"))
    return 3600 * hours + 60 * minutes + secs


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plain_reporter(clock: FakeClock, **options: Any) -> tuple[Reporter, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=300, soft_wrap=True)
    return Reporter(terminal=False, clock=clock, out=console, **options), out


# -- the reporter -------------------------------------------------------------------------------
def test_format_duration() -> None:
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(None) == format_duration(float("nan")) == "?"


def test_rate_and_eta_are_measured_from_the_first_update() -> None:
    clock = FakeClock()
    reporter, out = plain_reporter(clock, log_interval=1)
    reporter.update("glyphs", 0, 100, unit="glyphs")
    clock.now += 10
    reporter.update("glyphs", 20, 100, unit="glyphs")  # 2 glyphs/s, 80 left: 40 s
    first, second = progress_lines(out.getvalue(), "glyphs")
    assert (first["rate"], first["eta"]) == ("?", "?")
    assert (second["done"], second["total"], second["pct"]) == (20, 100, "20")
    assert (second["rate"], second["rate_unit"], second["eta"]) == ("2.0", "glyphs/s", "0:00:40")
    assert second["elapsed"] == "0:00:10"


def test_a_given_rate_and_eta_are_shown_as_given() -> None:
    clock = FakeClock()
    reporter, out = plain_reporter(clock, log_interval=1)
    clock.now += 5
    reporter.update("embed", 10, 50, unit="images", rate=250.0, rate_unit="img/s", eta_s=3725)
    (line,) = progress_lines(out.getvalue(), "embed")
    assert (line["rate"], line["rate_unit"], line["eta"]) == ("250", "img/s", "1:02:05")
    reporter.update("x", 1, 2, eta_s=float("nan"), extra="loss 0.5")  # NaN: not known yet
    (line,) = progress_lines(out.getvalue(), "x")
    assert (line["eta"], line["extra"]) == ("?", "loss 0.5")


def test_a_line_every_log_interval_updates_every_30_s_and_at_the_end() -> None:
    clock = FakeClock()
    reporter, out = plain_reporter(clock, log_interval=3)
    for done in range(1, 11):
        clock.now += 31 if done == 5 else 1  # update 5 comes 31 s after update 4
        reporter.update("job", done, 10)
    # 3 (interval), 5 (30 s after the line at 3), 8 (interval again), 10 (the job is done)
    assert [line["done"] for line in progress_lines(out.getvalue(), "job")] == [3, 5, 8, 10]


def test_jobs_are_counted_apart_and_finish_starts_afresh() -> None:
    clock = FakeClock()
    reporter, out = plain_reporter(clock, log_interval=2)
    for done in (1, 2):
        reporter.update("a", done, 9)
        reporter.update("b", done, 9)
    assert len(progress_lines(out.getvalue(), "a")) == len(progress_lines(out.getvalue(), "b")) == 1
    reporter.finish("a")
    clock.now += 10
    reporter.update("a", 5, 9)  # a new baseline: no rate yet, whatever "a" did before
    reporter.update("a", 6, 9)
    assert progress_lines(out.getvalue(), "a")[-1]["rate"] == "?"


def test_work_clock_costs_each_kind_of_work_by_its_own_speed() -> None:
    clock = FakeClock()
    work = WorkClock(clock=clock)
    assert work.seconds_left({"step": 5}) is None  # nothing measured yet
    for _ in range(4):
        clock.now += 2
        work.done("step")
    assert work.seconds_left({"step": 5, "val": 3}) is None  # val not measured, no fallback
    assert work.seconds_left({"step": 5, "val": 3}, fallback={"val": "step"}) == 16
    clock.now += 1.5  # a validation batch, with the pause before it
    work.done("val")
    assert work.per_unit("val") == 1.5
    assert work.seconds_left({"step": 5, "val": 3, "other": 0}) == 14.5


# -- training: the ETA covers the remaining epochs and their validations ------------------------
def train_progress(clock: FakeClock, **config: Any) -> tuple[Any, io.StringIO]:
    from lscindex.training import TrainConfig
    from lscindex_cli.train_cmd import TrainProgress

    reporter, out = plain_reporter(clock, log_interval=1)
    progress = TrainProgress(reporter, TrainConfig(data="data", batch_size=4, **config))
    progress.on_start(
        epochs=3,
        steps_per_epoch=4,
        start_epoch=0,
        start_step=0,
        n_train=16,
        n_val=8,  # 2 val batches of 4
        n_classes=4,
        dim=4,
        device="cpu",
    )
    return progress, out


def test_train_eta_counts_every_step_and_validation_left(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = FakeClock()
    progress, out = train_progress(clock, epochs=3)
    clock.now += 1
    progress.on_step(epoch=0, step=1, loss=1.0, img_per_s=4.0)
    # 11 steps at 1 s, and 3 validations of 2 batches costed like steps until one has run
    assert progress_lines(out.getvalue(), "train")[-1]["eta"] == "0:00:17"
    for step in (2, 3, 4):
        clock.now += 1
        progress.on_step(epoch=0, step=step, loss=1.0, img_per_s=4.0)
    clock.now += 3  # the first val batch: 3 s (its loader starting included)
    progress.on_val_step(epoch=0, step=1, steps=2, img_per_s=1.0)
    val = progress_lines(out.getvalue(), "val")[-1]
    assert val["label"] == "val epoch 1/3" and (val["done"], val["total"]) == (1, 2)
    assert val["eta"] == "0:00:23"  # 8 steps * 1 s + 5 val batches * 3 s
    clock.now += 3
    progress.on_val_step(epoch=0, step=2, steps=2, img_per_s=1.0)
    progress.on_epoch(epoch_metrics())
    clock.now += 1
    progress.on_step(epoch=1, step=1, loss=0.5, img_per_s=4.0)
    line = progress_lines(out.getvalue(), "train")[-1]
    assert line["label"] == "train epoch 2/3 step 1/4" and (line["done"], line["total"]) == (5, 12)
    assert line["eta"] == "0:00:19"  # 7 steps * 1 s + 4 val batches * 3 s
    assert line["extra"] == "loss 0.5000" and line["rate_unit"] == "img/s"


def test_train_eta_stops_at_max_steps(capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    progress, out = train_progress(clock, epochs=3, max_steps=6)
    clock.now += 1
    progress.on_step(epoch=0, step=1, loss=1.0, img_per_s=4.0)
    line = progress_lines(out.getvalue(), "train")[-1]
    # 5 steps, and the validations of epochs 1 and 2 (max_steps ends in epoch 2)
    assert line["total"] == 6 and line["eta"] == "0:00:09"


def epoch_metrics() -> Any:
    from lscindex.training import EpochMetrics

    return EpochMetrics(
        epoch=1,
        train_loss=1.0,
        val_loss=1.0,
        val_top1=0.5,
        val_top5=1.0,
        img_per_s=4.0,
        wall_s=4.0,
        peak_mem_mb=1.0,
        lr=1e-3,
        skipped_images=0,
        world_size=1,
        global_step=4,
    )


# -- the commands, in a log ---------------------------------------------------------------------
FAST = ["--model", "test_resnet", "--batch-size", "16", "-j", "0", "--img-size", "16"]


@pytest.fixture(scope="module")
def logged_run(
    image_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """``lscindex train --assignment data`` (2 epochs of 6 steps) with --log-interval 1: (run,
    stdout)."""
    capture = pytest.MonkeyPatch()
    out = io.StringIO()
    capture.setattr("sys.stdout", out)
    run = tmp_path_factory.mktemp("progress") / "run"
    from lscindex_cli.main import main

    # the data assignment: a matching pass before step 1 and a re-match mid-run to report
    args = ["train", str(image_folder), "--out", str(run), "--epochs", "2", "--assignment", "data"]
    args += FAST
    try:
        main([*args, "--log-interval", "1"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    finally:
        capture.undo()
    yield run, out.getvalue()


def test_train_prints_a_line_per_step_and_per_val_batch(logged_run: tuple[Path, str]) -> None:
    _, stdout = logged_run
    steps = progress_lines(stdout, "train epoch")
    assert [line["done"] for line in steps] == list(range(1, 13))  # 96 images / 16, 2 epochs
    assert {line["total"] for line in steps} == {12} and {line["unit"] for line in steps} == {
        "steps"
    }
    assert steps[0]["label"] == "train epoch 1/2 step 1/6"
    assert steps[-1]["label"] == "train epoch 2/2 step 6/6"
    assert all(float(line["rate"].replace(",", "")) > 0 for line in steps)
    assert all(line["rate_unit"] == "img/s" and line["extra"].startswith("loss ") for line in steps)
    assert steps[0]["eta"] != "?" and steps[-1]["eta"] != "?"
    etas = [seconds(line["eta"]) for line in steps]
    assert etas[-1] <= etas[0]
    vals = progress_lines(stdout, "val epoch")
    assert [(v["label"], v["done"], v["total"]) for v in vals] == [
        ("val epoch 1/2", 1, 1),  # 12 val images: one batch of 16
        ("val epoch 2/2", 1, 1),
    ]
    assert seconds(vals[-1]["eta"]) == 0 and vals[-1]["unit"] == "batches"
    # In order: epoch 1's steps, its validation, its summary line, then epoch 2.
    lines = stdout.splitlines()
    last_val = max(i for i, x in enumerate(lines) if x.startswith("val epoch 1/2"))
    summary = next(i for i, x in enumerate(lines) if x.startswith("epoch 1: train loss"))
    epoch_2 = next(i for i, x in enumerate(lines) if x.startswith("train epoch 2/2"))
    assert last_val < summary < epoch_2


def test_train_reports_the_matching_passes(logged_run: tuple[Path, str]) -> None:
    """The data assignment embeds a few images per class before the first step and at the
    re-match after step 6; each pass is reported in images, ending complete."""
    _, stdout = logged_run
    lines = stdout.splitlines()
    matches = progress_lines(stdout, "match classes to targets")
    assert matches and {m["unit"] for m in matches} == {"images"}
    assert all(m["rate_unit"] == "img/s" and float(m["rate"].replace(",", "")) > 0 for m in matches)
    ends = [m for m in matches if m["done"] == m["total"]]
    assert len(ends) == 2  # the first matching, and the re-match (no leftovers at 6 classes)
    at = [i for i, x in enumerate(lines) if x.startswith("match classes")]
    step = {
        x.split(":")[0].split()[-1]: i
        for i, x in enumerate(lines)
        if x.startswith("train epoch 1/2 step")
    }
    # the first matching before step 1; the re-match after step 6's update, before its line
    assert [i < step["1/6"] or step["5/6"] < i < step["6/6"] for i in at] == [True] * len(at)
    assert any(step["5/6"] < i < step["6/6"] for i in at) and at[0] < step["1/6"]


def test_embed_and_index_print_lines_with_rate_and_eta(
    logged_run: tuple[Path, str],
    image_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, _ = logged_run
    store = tmp_path / "val.zarr"
    args = ["embed", str(image_folder / "val"), "--run", str(run), "--out", str(store)]
    code, out, err = run_cli([*args, "-b", "4", "-j", "0", "--log-interval", "1"], capsys)
    assert code == 0, err
    lines = progress_lines(out, "embed")
    assert [(x["done"], x["total"], x["unit"]) for x in lines] == [
        (4, 12, "images"),
        (8, 12, "images"),
        (12, 12, "images"),
    ]
    assert all(x["rate_unit"] == "img/s" and x["eta"] != "?" for x in lines)
    assert seconds(lines[-1]["eta"]) == 0

    code, out, err = run_cli(
        ["index", str(store), "--out", str(tmp_path / "val.faiss"), "--log-interval", "1"], capsys
    )
    assert code == 0, err
    lines = progress_lines(out, "index add")  # Flat: nothing to train
    assert not progress_lines(out, "index train")
    assert (lines[0]["done"], lines[-1]["done"], lines[-1]["total"]) == (0, 12, 12)
    assert lines[-1]["rate_unit"] == "rows/s" and lines[-1]["eta"] == "0:00:00"


def test_data_glyphs_prints_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lscindex.glyphs import find_fonts

    fonts = tmp_path / "fonts"
    fonts.mkdir()
    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf"):
        shutil.copy(next(p for p in find_fonts("pip") if p.name == name), fonts / name)
    args = ["data", "glyphs", str(tmp_path / "ds"), "--fonts", str(fonts), "--classes", "4"]
    args += ["--size", "16", "--min-fonts", "2", "--val-fonts", "1", "-j", "1"]
    code, out, err = run_cli([*args, "--log-interval", "1"], capsys)
    assert code == 0, err
    lines = progress_lines(out, "glyphs")
    assert len(lines) > 3 and {x["unit"] for x in lines} == {"glyphs"}
    assert all(x["rate_unit"] == "glyphs/s" for x in lines)
    assert lines[-1]["done"] == lines[-1]["total"] and lines[-1]["eta"] == "0:00:00"
    assert [x["done"] for x in lines] == sorted(x["done"] for x in lines)


def test_build_index_reports_training_and_adding_without_changing_the_index(
    logged_run: tuple[Path, str], image_folder: Path, tmp_path: Path
) -> None:
    from lscindex.embedding import build_store
    from lscindex.index import build_index

    store = tmp_path / "all.zarr"  # 108 rows: enough to train 2 lists without FAISS warnings
    build_store(logged_run[0], [image_folder], store, batch_size=64, workers=0)
    calls: list[tuple[str, int, int]] = []
    quiet = build_index(store, factory="IVF2,Flat", out=tmp_path / "quiet.faiss")
    loud = build_index(
        store, factory="IVF2,Flat", out=tmp_path / "loud.faiss", progress=lambda *a: calls.append(a)
    )
    assert loud.sha256 == quiet.sha256 and loud.count == quiet.count == 108
    n = loud.count  # every row is readable, and fewer than train_size: all are sampled
    assert calls[:3] == [("train", 0, n), ("train", n, n), ("add", 0, n)]
    added = [done for stage, done, total in calls[2:] if stage == "add" and total == n]
    assert len(added) == len(calls) - 2 and added == sorted(added) and added[-1] == n


def test_a_terminal_gets_bars_not_lines(
    logged_run: tuple[Path, str],
    image_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, _ = logged_run
    args = [
        "embed",
        str(image_folder / "val"),
        "--run",
        str(run),
        "--out",
        str(tmp_path / "e.zarr"),
    ]
    args += ["-b", "4", "-j", "0", "--log-interval", "1"]
    monkeypatch.setattr(_progress, "is_terminal", lambda: True)
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "embedded 12 images" in out and not progress_lines(out, "")
    monkeypatch.setattr(_progress, "is_terminal", lambda: False)
    code, out, err = run_cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert len(progress_lines(out, "embed")) == 3
