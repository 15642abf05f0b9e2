"""lscindex_cli: commands run end to end; errors are one line with exit status 1."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
import typer.main
from helpers import assert_same_shape, documented_json, run_cli, strict_json

from lscindex_cli.main import main


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
    data = strict_json(out)
    assert (data["schema_version"], data["kind"]) == (1, "systems")
    assert [(r["kind"], r["dim"]) for r in data["systems"]] == [("v21", 14), ("v11", 33)]
    assert data["systems"][0]["target_matrix_bytes"] == 1000 * 14 * 4
    assert data["softmax_head"]["params"] == 1000 * 385
    docs = Path(__file__).parents[1] / "docs" / "json-schema.md"
    assert_same_shape(data, documented_json(docs, "systems"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["systems", "--classes", "0"], "n_classes must be >= 1, got 0"),
        (["systems", "--classes", "10", "--kind", "v9"], "unknown vector system kind 'v9'"),
        (["train", "data", "--rematch-per-epoch", "-1"], "rematch_per_epoch must be >= 0"),
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


# -- the command tree, as typer builds it -----------------------------------------------------


def click_command(*path: str) -> Any:
    """The click command at ``path`` ("train", or "data", "glyphs") of the lscindex app."""
    from lscindex_cli.main import app

    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def leaf_commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not hasattr(command, "commands"):
        return [path]
    return [p for name, sub in command.commands.items() for p in leaf_commands(sub, (*path, name))]


# -- train: options single-sourced from TrainConfig -------------------------------------------


def test_train_exposes_every_train_config_field() -> None:
    from lscindex.training import TrainConfig
    from lscindex_cli.train_cmd import HELP

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    expected = names | {"resume", "log_interval", "debug"}
    assert {p.name for p in click_command("train").params} == expected
    assert set(HELP) == names, "each TrainConfig field needs its help text in train_cmd.HELP"


def listed_options(help_text: str) -> dict[str, tuple[str, str | None]]:
    """``--name -> (type, default)`` of each option row of a rich --help screen (wrapped or not)."""
    rows: dict[str, str] = {}
    name = None
    for line in help_text.splitlines():
        start = re.match(r"\W*(--[\w-]+)\s", line)
        if start:
            name = start.group(1)
            rows[name] = ""
        if name is not None:
            rows[name] += " " + line.strip("│ ")
    listed = {}
    for name, text in rows.items():
        kind = re.search(r"<([^>]+)>", text)
        default = re.search(r"\[default:\s+([^\]]+)\]", text)
        listed[name] = (kind.group(1) if kind else "", default.group(1) if default else None)
    return listed


def test_train_help_lists_each_option_with_the_train_config_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lscindex.training import TrainConfig

    monkeypatch.setenv("COLUMNS", "300")  # one row per option
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    hints = get_type_hints(TrainConfig)
    expected = {"--resume": ("", "no-resume"), "--log-interval": ("int range", "50")}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "data":
            assert re.search(r"\bdata\s+<path>\s+ImageFolder \(train/ \[val/\]\)", out)
            continue
        hint = hints[f.name]
        if f.name == "out":
            shown = ("path", str(f.default))
        elif f.name == "dim":
            shown = ("str", "auto")  # None: the system's n_min
        elif f.name in ("opt", "sched"):
            shown = ("name", str(f.default))  # checked against timm's names as parsed
        elif f.name == "device":
            shown = ("auto|cpu|cuda|cuda:N", str(f.default))
        elif get_origin(hint) is Literal:
            shown = ("|".join(get_args(hint)), str(f.default))  # the choices, checked as parsed
        elif hint is bool:
            shown = ("", f.name if f.default else f"no-{f.name}")  # a flag takes no value
        else:
            shown = (hint.__name__, str(f.default))
        expected[f"--{f.name.replace('_', '-')}"] = shown
    listed = listed_options(out)
    assert {k: listed.get(k) for k in expected} == expected
    assert re.search(r"--batch-size\s+-b\s", out)
    assert re.search(r"--augment\s+--no-augment\s", out)


# -- --debug: parsed by typer, before or after the command ------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--debug", "systems", "--classes", "0"],
        ["systems", "--classes", "0", "--debug"],
        ["systems", "--debug", "--classes", "0"],
        ["train", "data", "--rematch-until", "2", "--debug"],
    ],
)
def test_debug_before_or_after_the_command_lets_the_error_through(args: list[str]) -> None:
    from lscindex.errors import ConfigError

    with pytest.raises(ConfigError):
        main(args)


def test_debug_is_per_invocation_and_read_where_typer_parses_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lscindex.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["systems", "--classes", "0", "--debug"])
    code, _, err = run_cli(["systems", "--classes", "0"], capsys)  # no --debug left over
    assert code == 1 and len(err.strip().splitlines()) == 1
    # Here "--debug" is the value of --kind, not the flag.
    code, _, err = run_cli(["systems", "-n", "10", "--kind", "--debug"], capsys)
    assert code == 1 and "unknown vector system kind '--debug'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "args", [["systems", "--debug"], ["--debug", "train"], ["train", "--debug"]]
)
def test_usage_errors_exit_2_with_debug_too(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(args, capsys)[0] == 2


def test_every_command_accepts_debug() -> None:
    commands = leaf_commands(click_command())
    assert ("train",) in commands and ("data", "glyphs") in commands
    for path in commands:
        assert "--debug" in {o for p in click_command(*path).params for o in p.opts}, path


def test_console_script_debug_after_the_command_prints_the_traceback() -> None:
    cmd = [sys.executable, "-m", "lscindex_cli.main", "systems", "-n", "0"]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True)
    assert plain.returncode == 1 and plain.stderr.strip().splitlines() == [
        "error: n_classes must be >= 1, got 0"
    ]
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert debug.stderr.strip().endswith("ConfigError: n_classes must be >= 1, got 0")


# -- defaults come from the library ------------------------------------------------------------


def library_functions() -> dict[tuple[str, ...], Any]:
    import lscindex
    from lscindex.embedding import build_store
    from lscindex.glyphs import build_glyph_dataset
    from lscindex.index import build_index
    from lscindex.retrieval import Retriever

    return {
        ("embed",): build_store,
        ("index",): build_index,
        ("query",): Retriever.query,
        ("systems",): lscindex.softmax_head_size,
        ("data", "glyphs"): build_glyph_dataset,
    }


@pytest.mark.parametrize(
    "path", [("embed",), ("index",), ("query",), ("systems",), ("data", "glyphs")]
)
def test_option_defaults_are_the_library_defaults(path: tuple[str, ...]) -> None:
    library = inspect.signature(library_functions()[path]).parameters
    shared = [p for p in click_command(*path).params if p.name in library and p.default is not None]
    assert shared
    for p in shared:
        assert p.default == library[p.name].default, (path, p.name)


# -- query: each image embedded once -----------------------------------------------------------


@pytest.fixture(scope="module")
def query_runs(image_folder, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A tiny lsc run and a tiny ce run, each with a store of the val images."""
    root = tmp_path_factory.mktemp("query")
    fast = ["--model", "test_resnet", "--epochs", "1", "--max-steps", "2", "--batch-size", "8"]
    fast += ["--workers", "0", "--img-size", "16"]
    made = {}
    for head in ("lsc", "ce"):
        run, store = root / head, root / f"{head}.zarr"
        for args in (
            ["train", str(image_folder), "--out", str(run), "--head", head, *fast],
            ["embed", str(image_folder / "val"), "--run", str(run), "--out", str(store)],
        ):
            try:
                main([*args, "--workers", "0"])
            except SystemExit as exc:
                assert exc.code in (0, None), args
        made[head] = (run, store)
    return made


@pytest.mark.parametrize("head", ["lsc", "ce"])
def test_query_embeds_each_image_once(
    head: str,
    query_runs,  # type: ignore[no-untyped-def]
    image_folder,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lscindex.retrieval
    from lscindex.retrieval import Retriever

    run, store = query_runs[head]
    images = sorted(str(p) for p in (image_folder / "val").rglob("*.png"))[:4]
    encoded: list[int] = []
    encode_batch = lscindex.retrieval.encode_batch

    def counting(run: Any, batch: Any) -> Any:
        encoded.append(len(batch))
        return encode_batch(run, batch)

    monkeypatch.setattr(lscindex.retrieval, "encode_batch", counting)
    args = ["query", *images, "--run", str(run), "--store", str(store), "-k", "3", "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert sum(encoded) == len(images)  # classes and neighbours from one forward pass
    monkeypatch.undo()
    # The same answers as the library's own image path.
    doc = strict_json(out)
    assert doc["score_meaning"] == ("cosine" if head == "lsc" else "probability")
    retriever = Retriever.open(run, store=store)
    classes, neighbors = retriever.classify(images, k=3), retriever.search(images, k=3)
    for row, cls, near in zip(doc["results"], classes, neighbors, strict=True):
        assert [c["id"] for c in row["classes"]] == [c.id for c in cls]
        assert [c["score"] for c in row["classes"]] == pytest.approx(
            [c.score for c in cls], abs=1e-5
        )
        assert [n["path"] for n in row["neighbors"]] == [n.path for n in near]
        assert [n["score"] for n in row["neighbors"]] == pytest.approx(
            [n.score for n in near], abs=1e-5
        )


def test_query_json_is_versioned_strict_and_names_what_answered(
    query_runs,  # type: ignore[no-untyped-def]
    image_folder,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, store = query_runs["lsc"]
    image = str(sorted((image_folder / "val").rglob("*.png"))[0])
    code, out, err = run_cli(["query", image, "--run", str(run), "-k", "6", "--json"], capsys)
    assert code == 0, err
    doc = strict_json(out)  # k = the run's 6 classes: the last margin is null, not NaN
    assert list(doc)[:2] == ["schema_version", "kind"]
    assert (doc["schema_version"], doc["kind"], doc["k"]) == (1, "query", 6)
    assert doc["run"]["path"] == str(run) and re.fullmatch(
        r"[0-9a-f]{16}", doc["run"]["fingerprint"]
    )
    assert (doc["run"]["head"], doc["run"]["system"], doc["run"]["n_classes"]) == ("lsc", "v21", 6)
    assert doc["store"]["path"] == str(store) and doc["store"]["rows"] == 12
    assert doc["index"] == {"path": None, "factory": "Flat", "count": 12}
    assert doc["chosen"] == {
        "run": "given",
        "store": "the only store embedded with this run",
        "index": "none beside the store: exact search in memory",
    }
    (result,) = doc["results"]
    assert result["image"] == image and result["error"] is None and result["novel"] is False
    assert [c["margin"] is None for c in result["classes"]] == [False] * 5 + [True]
    assert len(result["neighbors"]) == 6


def test_the_documented_query_document_has_the_fields_query_prints(
    query_runs,  # type: ignore[no-untyped-def]
    image_folder,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    documented = documented_json(Path(__file__).parents[1] / "docs" / "json-schema.md", "query")
    run, store = query_runs["lsc"]
    image = str(sorted((image_folder / "val").rglob("*.png"))[0])
    args = ["query", image, "--run", str(run), "--store", str(store), "--json", "-k", "3"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert_same_shape(strict_json(out), documented)


def test_query_takes_folders_and_reports_an_unreadable_image(
    query_runs,  # type: ignore[no-untyped-def]
    image_folder,  # type: ignore[no-untyped-def]
    tmp_path,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, _ = query_runs["lsc"]
    folder = image_folder / "val" / "class_003"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    args = ["query", str(folder), str(broken), "--run", str(run), "-k", "2"]
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 1
    results = strict_json(out)["results"]
    assert [r["image"] for r in results] == [*map(str, sorted(folder.glob("*.png"))), str(broken)]
    assert [r["error"] is None for r in results] == [True, True, False]
    assert results[-1]["classes"] == [] and str(broken) in results[-1]["error"]
    assert err.strip().splitlines() == [
        f"error: 1 of 3 images could not be read (first: {results[-1]['error']})"
    ]
    code, out, err = run_cli(args, capsys)  # the tables of the other two, then the error
    assert code == 1 and out.count("class_003") >= 2 and str(broken) in out
    assert err.strip().splitlines()[-1].startswith("error: 1 of 3 images could not be read")


def test_query_refuses_several_runs_and_says_what_it_chose(
    query_runs,  # type: ignore[no-untyped-def]
    image_folder,  # type: ignore[no-untyped-def]
    tmp_path,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    for head in ("lsc", "ce"):
        shutil.copytree(query_runs[head][0], tmp_path / "runs" / head)
    monkeypatch.chdir(tmp_path)
    image = str(sorted((image_folder / "val").rglob("*.png"))[0])
    code, _, err = run_cli(["query", image], capsys)
    assert code == 1 and err.strip().splitlines() == [
        "error: 2 runs under runs/ (runs/ce, runs/lsc); name the one to use (--run RUN, "
        "Retriever.open(RUN))"
    ]
    shutil.rmtree(tmp_path / "runs" / "ce")
    code, out, err = run_cli(["query", image, "-k", "2"], capsys)
    assert code == 0, err
    assert "run runs/lsc (v21, dim" in err and "the only run under runs/" in err
    assert f"store {query_runs['lsc'][1]} (12 rows; the only store embedded with this run)" in err
    assert "index in memory (Flat; none beside the store: exact search in memory)" in err
    code, out, err = run_cli(["query", image, "-k", "2", "--no-store"], capsys)
    assert code == 0 and "no store searched (none asked for)" in err
    assert "nearest stored items" not in out
