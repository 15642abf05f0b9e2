"""lscindex.checkpoint: pickle-free optimizer state, RNG states, checkpoint pointer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lscindex import checkpoint as ckpt
from lscindex.errors import RunError


def _trained_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
    return model, opt


def test_training_state_roundtrips_without_pickle(tmp_path: Path) -> None:
    model, opt = _trained_optimizer()
    state = ckpt.TrainingState(
        epoch=2,
        step_in_epoch=5,
        global_step=17,
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        rng=ckpt.capture_rng(),
        extra={"k": [1]},
    )
    folder = ckpt.save_training_state(tmp_path, state)
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    loaded = ckpt.load_training_state(tmp_path)
    assert loaded is not None
    assert (loaded.epoch, loaded.step_in_epoch, loaded.global_step) == (2, 5, 17)
    assert loaded.extra == {"k": [1]}
    _, fresh_opt = _trained_optimizer()
    fresh_opt.load_state_dict(loaded.optimizer)
    for a, b in zip(
        opt.state_dict()["state"].values(), fresh_opt.state_dict()["state"].values(), strict=True
    ):
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    assert fresh_opt.param_groups[0]["betas"] == [0.8, 0.9] or tuple(
        fresh_opt.param_groups[0]["betas"]
    ) == (0.8, 0.9)
    # RNG states restore exactly
    ckpt.restore_rng(loaded.rng)
    x = torch.rand(3)
    ckpt.restore_rng(loaded.rng)
    torch.testing.assert_close(torch.rand(3), x)


def _save_steps(
    run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, steps: tuple[int, ...]
) -> None:
    for step in steps:
        ckpt.save_training_state(
            run_dir,
            ckpt.TrainingState(
                epoch=0,
                step_in_epoch=step,
                global_step=step,
                model=model.state_dict(),
                optimizer=opt.state_dict(),
                rng=ckpt.capture_rng(),
                extra={},
            ),
        )


def test_only_the_newest_checkpoint_is_kept_and_pointed_to(tmp_path: Path) -> None:
    model, opt = _trained_optimizer()
    _save_steps(tmp_path, model, opt, (1, 2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest.json",
        "step-000000002",
    ]
    assert (tmp_path / "model.safetensors").is_file()


def test_a_half_written_checkpoint_is_ignored(tmp_path: Path) -> None:
    model, opt = _trained_optimizer()
    ckpt.save_training_state(
        tmp_path,
        ckpt.TrainingState(
            epoch=0,
            step_in_epoch=1,
            global_step=1,
            model=model.state_dict(),
            optimizer=opt.state_dict(),
            rng=ckpt.capture_rng(),
            extra={},
        ),
    )
    # what a crash mid-save leaves: a temp folder that latest.json does not point to
    (tmp_path / "checkpoints" / ".step-000000002.abc").mkdir()
    loaded = ckpt.load_training_state(tmp_path)
    assert loaded is not None and loaded.global_step == 1


def test_only_checkpoint_folders_are_ever_removed(tmp_path: Path) -> None:
    model, opt = _trained_optimizer()
    mine = tmp_path / "checkpoints" / "notes"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("not lscindex's")
    _save_steps(tmp_path, model, opt, (1, 2))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest.json", "notes", "step-000000002"]
    assert (mine / "keep.txt").read_text() == "not lscindex's"


@pytest.mark.parametrize(
    ("pointer", "match"),
    [
        ("[]", "TypeError"),
        ('{"checkpoint": "../.."}', "not a checkpoint folder"),
        ("{not json", "JSONDecodeError"),
    ],
)
def test_a_damaged_checkpoint_is_one_run_error(tmp_path: Path, pointer: str, match: str) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest.json").write_text(pointer)
    with pytest.raises(RunError, match=match):
        ckpt.load_training_state(tmp_path)
