"""lscindex.training: end-to-end runs, exact resume after SIGKILL, DDP, and every bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_image_folder
from safetensors.numpy import load_file

from lscindex import VectorSystem
from lscindex.checkpoint import load_training_state
from lscindex.errors import ConfigError, DataError, RunError
from lscindex.run import load_assignment
from lscindex.training import TrainConfig, fit

TIMING = {"img_per_s", "wall_s", "peak_mem_mb"}


def config(data: Path, out: Path, **kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    defaults = dict(model="test_resnet", epochs=2, batch_size=16, workers=0, lr=3e-3)
    defaults.update(kw)
    return TrainConfig(data=str(data), out=str(out), **defaults)  # type: ignore[arg-type]


def metrics_of(run: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_lsc_run_learns_and_writes_a_complete_run_dir(image_folder: Path, tmp_path: Path) -> None:
    result = fit(config(image_folder, tmp_path / "run", epochs=8))
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "classes.json",
        "model.safetensors",
        "metrics.jsonl",
        "curves.png",
        "checkpoints",
        "assignment.safetensors",
    }
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["system"]["assignment"] == "data"  # the default
    table = load_assignment(run / "assignment.safetensors")
    system = VectorSystem.from_dict(cfg["model"]["system"], table=table)
    assert (system.kind, system.n_classes, system.dim) == ("v21", 6, 4)
    assert sorted(set(table.tolist())) == sorted(table.tolist())  # one-to-one
    assert cfg["train"]["model"] == "test_resnet" and cfg["format_version"] == 1
    assert json.loads((run / "classes.json").read_text()) == [f"class_{c:03d}" for c in range(6)]
    weights = load_file(run / "model.safetensors")
    assert weights["head.weight"].shape == (4, result.model.backbone.num_features)  # type: ignore[union-attr]
    rows = metrics_of(run)
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # far above chance (1/6) on held-out images
    assert rows[-1]["val_top1"] >= 0.8
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ce_baseline_uses_a_learned_head(image_folder: Path, tmp_path: Path) -> None:
    result = fit(config(image_folder, tmp_path / "ce", head="ce", epochs=1))
    assert result.model is not None and result.model.head.out_features == 6
    cfg = json.loads((tmp_path / "ce" / "config.json").read_text())
    assert cfg["model"]["head"] == "ce" and cfg["model"]["system"] is None
    assert metrics_of(tmp_path / "ce")[0]["val_top5"] is not None


def test_other_systems_and_explicit_dim(image_folder: Path, tmp_path: Path) -> None:
    fit(config(image_folder, tmp_path / "v11", system="v11", dim=9, epochs=1))
    cfg = json.loads((tmp_path / "v11" / "config.json").read_text())
    assert cfg["model"]["system"]["kind"] == "v11" and cfg["model"]["system"]["dim"] == 9


def test_manifest_input_with_val_fraction(image_folder: Path, tmp_path: Path) -> None:
    lines = ["path,label"]
    for p in sorted((image_folder / "train").rglob("*.png")):
        lines.append(f"{p},{p.parent.name}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    result = fit(config(manifest, tmp_path / "run", epochs=1, val_fraction=0.25))
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["n_val"] == 24 and cfg["data"]["n_train"] == 72
    assert result.metrics[0].val_top1 is not None


def test_unreadable_images_are_counted_and_skipped(image_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    (data / "train" / "class_000" / "000.png").write_bytes(b"")  # 0 bytes
    (data / "train" / "class_001" / "001.png").write_bytes(b"not an image at all")
    png = (data / "train" / "class_002" / "002.png").read_bytes()
    (data / "train" / "class_002" / "002.png").write_bytes(png[: len(png) // 2])  # truncated
    warnings: list[str] = []

    class Record(__import__("lscindex").training.TrainCallbacks):  # type: ignore[misc]
        def on_warning(self, message: str) -> None:
            warnings.append(message)

    result = fit(config(data, tmp_path / "run", epochs=1), callbacks=Record())
    assert result.metrics[0].skipped_images == 3
    assert warnings == ["epoch 1: skipped 3 unreadable image(s)"]


# -- exact resume ---------------------------------------------------------------------------------
def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lscindex_cli.main",
        "train",
        str(data),
        "--out",
        str(out),
        "--model",
        "test_resnet",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--checkpoint-every",
        "1",
        "--seed",
        "3",
        "--assignment",
        "data",
        "--rematch-per-epoch",
        "4",
        "--rematch-until",
        "0.5",
        *extra,
    ]


def _latest_step(run: Path) -> tuple[int, int]:
    pointer = run / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return -1, -1
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
        state = json.loads((run / "checkpoints" / name / "state.json").read_text())
    except (OSError, ValueError, KeyError):
        return -1, -1
    return state["global_step"], state["step_in_epoch"]


def test_sigkill_mid_epoch_then_resume_gives_identical_weights_and_metrics(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", n_classes=5, per_class=16, val=2)  # 10 steps/epoch
    env = dict(os.environ, OMP_NUM_THREADS="1")
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(data, reference), check=True, env=env, capture_output=True)

    # 10 steps per epoch: classes are re-matched after steps 2, 4, ..., 14, so the kills at
    # steps 13 and 22 resume on a table that came from a re-matching, the first mid-epoch
    assert [len(r["reassigned"]) for r in metrics_of(reference)] == [5, 2, 0]
    run = tmp_path / "killed"
    for kills, target in enumerate((4, 13, 22)):  # mid-epoch 1, 2 and 3
        cmd = _train_cmd(data, run, *(["--resume"] if kills else []))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and _latest_step(run)[0] < target:
            time.sleep(0.01)
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _latest_step(run)[1] > 0  # the last checkpoint is mid-epoch
        assert load_training_state(run) is not None  # and loads
    subprocess.run(_train_cmd(data, run, "--resume"), check=True, env=env, capture_output=True)

    final, expected = (
        load_file(run / "model.safetensors"),
        load_file(reference / "model.safetensors"),
    )
    assert final.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(final[key], expected[key], err_msg=key)
    assert metrics_of(run) == metrics_of(reference)
    assert (run / "assignment.safetensors").read_bytes() == (
        reference / "assignment.safetensors"
    ).read_bytes()


def test_resume_of_a_finished_run_trains_nothing_more(image_folder: Path, tmp_path: Path) -> None:
    fit(config(image_folder, tmp_path / "run", epochs=1))
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    result = fit(config(image_folder, tmp_path / "run", epochs=1), resume=True)
    assert result.metrics == []
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


# -- torchrun -------------------------------------------------------------------------------------
def test_torchrun_two_ranks_keep_identical_parameters(image_folder: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "ddp"
    worker = Path(__file__).parent / "ddp_worker.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            str(worker),
            str(image_folder),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    start = load_training_state(out)
    assert start is not None and start.global_step == 4
    assert rank0.keys() == rank1.keys() and "head.weight" in rank0
    for key in rank0:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    assert metrics_of(out)[0]["world_size"] == 2
    # what rank 0 saved is the parameters the replicas share
    fresh = load_file(out / "model.safetensors")
    np.testing.assert_array_equal(fresh["head.weight"], rank0["head.weight"])


# -- bad input ------------------------------------------------------------------------------------
def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no training images found in .*empty"):
        fit(config(tmp_path / "empty", tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_single_class(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "one", n_classes=1, per_class=3)
    with pytest.raises(DataError, match=r"single class .*'class_000'.*at least 2 classes"):
        fit(config(data, tmp_path / "run"))


def test_missing_data_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        fit(config(tmp_path / "nope", tmp_path / "run"))


def test_more_classes_than_dim_holds(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"dim 3 holds 3 vectors, fewer than n_classes=6; use dim >= 4"
    ):
        fit(config(image_folder, tmp_path / "run", dim=3))
    assert not (tmp_path / "run").exists()


def test_unknown_model_suggests_close_names(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown timm model 'resnet181'; did you mean .*resnet18"
    ):
        fit(config(image_folder, tmp_path / "run", model="resnet181"))


def test_out_dir_holding_another_run_is_left_alone(image_folder: Path, tmp_path: Path) -> None:
    fit(config(image_folder, tmp_path / "run", epochs=1))
    snapshot = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(RunError, match="already holds a run; pass --resume"):
        fit(config(image_folder, tmp_path / "run", epochs=1))
    with pytest.raises(
        RunError, match=r"would change the architecture .*model: 'test_resnet' -> 'test_vit'"
    ):
        fit(config(image_folder, tmp_path / "run", model="test_vit"), resume=True)
    with pytest.raises(RunError, match=r"system: 'v21' -> 'v22'; img_size: 32 -> 48"):
        fit(config(image_folder, tmp_path / "run", img_size=48, system="v22"), resume=True)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == snapshot


def test_non_empty_foreign_out_dir(image_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match="not empty and is not an lscindex run"):
        fit(config(image_folder, tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_resume_without_a_run(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="holds no run; drop --resume"):
        fit(config(image_folder, tmp_path / "run"), resume=True)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"head": "svm"}, "head must be 'lsc' or 'ce'"),
        ({"device": "tpu"}, "device must be"),
        (
            {"assignment": "random"},
            "assignment must be 'codec', 'data' or 'features', got 'random'",
        ),
        ({"rematch_until": 1.5}, r"share of the training steps in \[0, 1\], got 1.5"),
        ({"rematch_per_epoch": -1}, "rematch_per_epoch must be >= 0"),
        ({"assign_samples": -2}, "assign_samples must be >= 0"),
        ({"loss_scale": 0.0}, "loss_scale must be > 0 and loss_weight >= 0, got 0.0 and 1.0"),
        ({"loss_weight": -1.0}, "loss_scale must be > 0 and loss_weight >= 0, got 1.0 and -1.0"),
        ({"loss": "hinge"}, "loss must be 'cosine' or 'lattice', got 'hinge'"),
    ],
)
def test_bad_config_values(kw: dict[str, object], match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        config(tmp_path, tmp_path / "run", **kw)


def test_config_roundtrip_rejects_unknown_keys() -> None:
    c = TrainConfig(data="d", out="o")
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="'colour'"):
        TrainConfig.from_dict({**c.to_dict(), "colour": 1})


def test_a_table_that_does_not_match_the_weights_is_refused(
    image_folder: Path, tmp_path: Path
) -> None:
    from lscindex.run import open_run, save_assignment

    run = tmp_path / "run"
    fit(config(image_folder, run, epochs=1))
    assert open_run(run).system.assignment == "data"
    table = load_assignment(run / "assignment.safetensors")
    # as if training stopped after writing the new table but before the new weights
    save_assignment(run / "assignment.safetensors", table[::-1].copy())
    with pytest.raises(RunError, match=r"is not the table .* was trained with"):
        open_run(run)
    (run / "assignment.safetensors").unlink()
    with pytest.raises(RunError, match=r"has no assignment\.safetensors"):
        open_run(run)


def test_codec_runs_train_without_a_table(image_folder: Path, tmp_path: Path) -> None:
    from lscindex.run import open_run

    run = tmp_path / "run"
    fit(config(image_folder, run, epochs=1, assignment="codec"))
    assert not (run / "assignment.safetensors").exists()
    spec = json.loads((run / "config.json").read_text())["model"]["system"]
    assert "assignment" not in spec
    assert open_run(run).system == VectorSystem.from_dict(spec)


# -- hostile data ------------------------------------------------------------------------------
def test_resume_on_other_data_is_refused_naming_the_change(
    image_folder: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    fit(config(data, tmp_path / "run", epochs=1))
    snapshot = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    (data / "train" / "class_000" / "000.png").unlink()
    with pytest.raises(RunError, match=r"other data \(n_train: 96 -> 95\); resume with the data"):
        fit(config(data, tmp_path / "run", epochs=2), resume=True)
    # the deleted image back, another one renamed: the counts match, the paths do not
    shutil.copy(data / "train" / "class_001" / "002.png", data / "train" / "class_000" / "000.png")
    (data / "train" / "class_001" / "001.png").rename(data / "train" / "class_001" / "099.png")
    with pytest.raises(RunError, match="same counts, other images or labels"):
        fit(config(data, tmp_path / "run", epochs=2), resume=True)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == snapshot


def test_a_fifo_in_the_training_folder_is_skipped_not_waited_on(
    image_folder: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    os.mkfifo(data / "train" / "class_000" / "fifo.png")  # open() on it would block forever
    result = fit(config(data, tmp_path / "run", epochs=1))
    assert result.metrics[0].skipped_images == 1


def test_a_last_batch_of_one_image_is_left_out_with_a_warning(
    image_folder: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    shutil.copy(data / "train" / "class_000" / "000.png", data / "train" / "class_000" / "100.png")
    warnings: list[str] = []

    class Record(__import__("lscindex").training.TrainCallbacks):  # type: ignore[misc]
        def on_warning(self, message: str) -> None:
            warnings.append(message)

    result = fit(config(data, tmp_path / "run", epochs=1), callbacks=Record())  # 97 = 6 x 16 + 1
    assert result.metrics[0].global_step == 6
    assert warnings == ["epoch 1: left out one image so that no batch has one"]


def test_resume_accepts_the_same_data_named_another_way(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    fit(config(data, tmp_path / "run", epochs=1))
    monkeypatch.chdir(tmp_path)
    result = fit(config(Path("data"), tmp_path / "run", epochs=2), resume=True)
    assert [m.epoch for m in result.metrics] == [2]


def test_batch_size_one_and_unknown_devices_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        config(tmp_path, tmp_path / "run", batch_size=1)
    from lscindex._distributed import select_device

    with pytest.raises(ConfigError, match="device 'gpu' is not one of auto, cpu, cuda"):
        select_device("gpu")


def test_feature_fit_assignment_resumes_bit_exact(image_folder: Path, tmp_path: Path) -> None:
    """The default assignment (the untrained backbone's class geometry fitted onto the lattice)
    is made once, saved with every checkpoint, and a run stopped mid-way resumes on it."""
    reference = tmp_path / "reference"
    fit(config(image_folder, reference, epochs=2))
    cfg = json.loads((reference / "config.json").read_text())
    assert cfg["train"]["assignment"] == "features" and cfg["train"]["centered"] is True
    assert cfg["model"]["system"]["centered"] is True
    stopped = tmp_path / "stopped"
    fit(config(image_folder, stopped, epochs=2, max_steps=8))  # 6 steps an epoch: mid-epoch 2
    fit(config(image_folder, stopped, epochs=2), resume=True)
    for key, value in load_file(reference / "model.safetensors").items():
        np.testing.assert_array_equal(load_file(stopped / "model.safetensors")[key], value)
    assert metrics_of(stopped) == metrics_of(reference)
    assert (stopped / "assignment.safetensors").read_bytes() == (
        reference / "assignment.safetensors"
    ).read_bytes()


def test_resuming_a_run_made_before_centring_needs_its_settings(
    image_folder: Path, tmp_path: Path
) -> None:
    run = tmp_path / "old"
    fit(config(image_folder, run, epochs=1, max_steps=1, assignment="data", centered=False))
    saved = json.loads((run / "config.json").read_text())
    del saved["train"]["centered"]  # as written by a version without the key
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(RunError, match=r"centered: False -> True"):
        fit(config(image_folder, run, epochs=1, assignment="data"), resume=True)
    fit(config(image_folder, run, epochs=1, assignment="data", centered=False), resume=True)


def test_lattice_softmax_loss_trains(image_folder: Path, tmp_path: Path) -> None:
    fit(config(image_folder, tmp_path / "run", epochs=8, loss="lattice", loss_scale=8.0))
    rows = metrics_of(tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["train"]["loss"] == "lattice" and cfg["train"]["loss_scale"] == 8.0
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_top1"] >= 0.8  # as the cosine run of the same length


# -- preemption: SIGTERM / SIGUSR1 ----------------------------------------------------------------
class _SignalAt(__import__("lscindex").training.TrainCallbacks):  # type: ignore[misc]
    """Sends this process ``signum`` at one point of a run: after train step ``step`` of epoch
    ``epoch`` (0-based), or at validation batch ``step`` when ``phase`` is "val"."""

    def __init__(self, signum: int, phase: str, epoch: int, step: int) -> None:
        self.signum, self.phase, self.epoch, self.step = signum, phase, epoch, step

    def on_step(self, *, epoch: int, step: int, **_: object) -> None:
        if self.phase == "train" and (epoch, step) == (self.epoch, self.step):
            os.kill(os.getpid(), self.signum)

    def on_val_step(self, *, epoch: int, step: int, **_: object) -> None:
        if self.phase == "val" and (epoch, step) == (self.epoch, self.step):
            os.kill(os.getpid(), self.signum)


def test_a_stop_signal_at_random_points_resumes_bit_exact(
    image_folder: Path, tmp_path: Path
) -> None:
    """SIGTERM or SIGUSR1 anywhere in a run (22 stops: after random train steps, during
    validation, at the last step of an epoch): the step finishes, a checkpoint is written,
    Preempted is raised, and resuming ends on the uninterrupted run's weights, metrics and
    assignment, bit for bit."""
    from lscindex.errors import Preempted

    settings = dict(epochs=3, assignment="data", rematch_per_epoch=2, rematch_until=0.5)
    reference = tmp_path / "reference"
    fit(config(image_folder, reference, **settings))
    steps = 6  # 96 training images in batches of 16
    rng = np.random.default_rng(0)
    points = [("train", 0, steps), ("val", 0, 1), ("train", 2, steps)]  # epoch ends, validation
    points += [("train", int(e), int(s) + 1) for e, s in rng.integers([0, 0], [3, steps], (19, 2))]
    runs = 0
    for first in range(0, len(points), 2):  # two stops a run, then it finishes
        run = tmp_path / f"stopped{first}"
        for i, (phase, epoch, step) in enumerate(sorted(points[first : first + 2])):
            signum = (signal.SIGTERM, signal.SIGUSR1)[runs % 2]
            stopper = _SignalAt(signum, phase, epoch, step)
            resume = i > 0
            if resume and _latest_step(run)[0] >= epoch * steps + step:
                continue  # the first stop already went past this point
            with pytest.raises(Preempted, match=rf"stopped by {signum.name} at epoch") as err:
                fit(config(image_folder, run, **settings), resume=resume, callbacks=stopper)
            assert err.value.signal == signum.name and "--resume to continue" in str(err.value)
            runs += 1
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are given back
        fit(config(image_folder, run, **settings), resume=True)
        for key, value in load_file(reference / "model.safetensors").items():
            np.testing.assert_array_equal(load_file(run / "model.safetensors")[key], value, key)
        assert metrics_of(run) == metrics_of(reference)
        assert (run / "assignment.safetensors").read_bytes() == (
            reference / "assignment.safetensors"
        ).read_bytes()
    assert runs >= 20


def test_sigterm_to_the_train_command_exits_75_and_the_same_command_resumes(
    tmp_path: Path,
) -> None:
    data = make_image_folder(tmp_path / "data", n_classes=5, per_class=16, val=2)  # 10 steps/epoch
    env = dict(os.environ, OMP_NUM_THREADS="1")
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(data, reference), check=True, env=env, capture_output=True)
    run = tmp_path / "stopped"
    proc = subprocess.Popen(
        _train_cmd(data, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _latest_step(run)[0] < 13:
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 75, err.decode()
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM at epoch 2")
    assert "run the same command with --resume" in lines[0]
    subprocess.run(_train_cmd(data, run, "--resume"), check=True, env=env, capture_output=True)
    for key, value in load_file(reference / "model.safetensors").items():
        np.testing.assert_array_equal(load_file(run / "model.safetensors")[key], value, key)
    assert metrics_of(run) == metrics_of(reference)


def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_at_the_same_step(
    image_folder: Path, tmp_path: Path
) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "ddp" / "run"
    worker = Path(__file__).parent / "ddp_stop_worker.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [str(torchrun), "--standalone", "--nproc_per_node=2", str(worker)]
    for mode in ("start", "resume"):
        proc = subprocess.run(
            [*launch, str(image_folder), str(out), mode],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        ended = [(out.parent / f"rank{r}.txt").read_text() for r in (0, 1)]
        if mode == "start":
            state = load_training_state(out)
            assert state is not None
            step = f"(global step {state.global_step})"
            assert ended[1].startswith("stopped by SIGTERM at epoch") and step in ended[1]
            assert ended[0].startswith("stopped by a stop request of another rank")
            assert step in ended[0]
    assert ended == ["finished", "finished"]
    assert len(metrics_of(out)) == 6
