"""lscindex_cli under hostile input: every failure is one line on stderr and exit status 1.

Crafted run files, unknown optimizer and schedule names, file names with rich markup or bytes
that are not UTF-8, a full or read-only disk, denied permissions and a FAISS error each end in
one ``error:`` line that names the offending value or path, leave the files that were there
byte-identical, and show their traceback only with ``--debug``. Usage errors exit 2.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import make_image_folder, make_plot_run, run_cli

from lscindex_cli.main import error_message, main

# Class folders named like rich markup and emoji codes: query prints them in a table. (A closing
# tag, which would crash the printer, needs a "/": a manifest label, not a folder name.)
HOSTILE_CLASSES = ("[red]alert", ":smile: [b]x", "plain")


def snapshot(*roots: Path) -> dict[Path, bytes]:
    """Every file under ``roots`` (or the file itself) with its bytes."""
    files: dict[Path, bytes] = {}
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        files.update({p: p.read_bytes() for p in paths})
    return files


def assert_one_line_error(
    code: int, err: str, *names: str, before: dict[Path, bytes], roots: tuple[Path, ...]
) -> None:
    """Exit 1, one ``error:`` line naming each of ``names``, no file under ``roots`` changed."""
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert snapshot(*roots) == before


@pytest.fixture(scope="module")
def hostile_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class ImageFolder whose class names are rich markup and emoji codes."""
    root = make_image_folder(tmp_path_factory.mktemp("hostile") / "data", n_classes=3, per_class=4)
    for split in ("train", "val"):
        for i, name in enumerate(HOSTILE_CLASSES):
            (root / split / f"class_{i:03d}").rename(root / split / name)
    return root


@pytest.fixture(scope="module")
def tiny_run(hostile_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test_resnet run of 2 steps on ``hostile_data``."""
    from lscindex.training import TrainConfig, fit

    out = tmp_path_factory.mktemp("runs") / "tiny"
    fit(
        TrainConfig(
            data=str(hostile_data),
            out=str(out),
            model="test_resnet",
            epochs=1,
            max_steps=2,
            batch_size=4,
            workers=0,
        )
    )
    return out


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """This test's own copy of ``tiny_run``, free to be damaged."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def query_image(hostile_data: Path) -> str:
    return str(next((hostile_data / "val" / "plain").glob("*.png")))


# -- validation before anything runs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message", "code"),
    [
        ("--opt", "adahessian", "opt 'adahessian' needs second-order gradients", 1),
        ("--sched", "plateau", "sched 'plateau' is not supported", 1),
        ("--opt", "adamx", "'adamx' is not one of the", 2),  # misspelt: a usage error
        ("--sched", "cosin", "'cosin' is not one of", 2),
    ],
)
def test_unknown_optimizer_or_schedule_is_refused_before_training(
    option: str,
    value: str,
    message: str,
    code: int,
    hostile_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = snapshot(hostile_data)
    out = tmp_path / "r"
    got, _, err = run_cli(["train", str(hostile_data), "--out", str(out), option, value], capsys)
    if code == 1:
        assert_one_line_error(got, err, message, before=before, roots=(hostile_data,))
    else:
        assert got == 2 and len(err.strip().splitlines()) == 1, err
        assert message in err and "Traceback" not in err
    assert not out.exists()


def damage_config(run: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(change(config)))


def set_model_key(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def change(config: dict[str, Any]) -> dict[str, Any]:
        config["model"][key] = value
        return config

    return change


@pytest.mark.parametrize(
    ("damage", "names"),
    [
        (lambda run: (run / "config.json").write_text("{not json"), ["config.json", "not valid"]),
        (lambda run: damage_config(run, lambda c: [c]), ["config.json", "JSON list"]),
        (
            lambda run: damage_config(run, lambda c: {k: v for k, v in c.items() if k != "model"}),
            ["config.json", "lacks the 'model' section"],
        ),
        (
            lambda run: damage_config(run, set_model_key("n_classes", "abc")),
            ["config.json", "n_classes", "'abc'"],
        ),
        (
            lambda run: damage_config(run, set_model_key("img_size", 10**9)),
            ["config.json", "img_size", "1000000000"],
        ),
        (
            lambda run: damage_config(run, set_model_key("backbone", "resnet1888")),
            ["config.json", "unknown timm model 'resnet1888'"],
        ),
        (lambda run: (run / "classes.json").write_text("[oops"), ["classes.json", "not valid"]),
        (
            lambda run: (run / "classes.json").write_text('["only one"]'),
            ["classes.json", "3 class names", "got a list of 1"],
        ),
    ],
    ids=[
        "config-not-json",
        "config-a-list",
        "no-model-key",
        "n-classes-a-string",
        "huge-img-size",
        "unknown-backbone",
        "classes-not-json",
        "classes-too-short",
    ],
)
def test_a_crafted_run_is_one_line_naming_the_file_and_key(
    damage: Callable[[Path], Any],
    names: list[str],
    run_copy: Path,
    hostile_data: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    damage(run_copy)
    before = snapshot(run_copy)
    code, _, err = run_cli(["query", query_image(hostile_data), "--run", str(run_copy)], capsys)
    assert_one_line_error(code, err, str(run_copy), *names, before=before, roots=(run_copy,))


def test_resume_into_a_crafted_run_is_one_line(
    run_copy: Path, hostile_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage_config(run_copy, lambda c: {**c, "train": ["not", "a", "dict"]})
    before = snapshot(run_copy, hostile_data)
    args = ["train", str(hostile_data), "--out", str(run_copy), "--model", "test_resnet"]
    code, _, err = run_cli([*args, "--workers", "0", "--resume"], capsys)
    assert_one_line_error(
        code,
        err,
        "config.json",
        "'train' must be a JSON object",
        before=before,
        roots=(run_copy, hostile_data),
    )


# -- user strings are never markup ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["query", "embed", "serve"])
def test_a_config_edited_to_another_dim_is_one_line_naming_both_files(
    command: str,
    tiny_run: Path,
    hostile_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["system"]["dim"] += 3
    (run / "config.json").write_text(json.dumps(config))
    before = snapshot(run)
    args = {
        "query": ["query", query_image(hostile_data), "--run", str(run)],
        "embed": ["embed", str(hostile_data), "--run", str(run), "--out", str(tmp_path / "e.zarr")],
        "serve": ["serve", "--run", str(run), "--port", "0"],
    }[command]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(
        code, err, "model.safetensors do not fit", "config.json", before=before, roots=(run,)
    )
    assert not (tmp_path / "e.zarr").exists()


def test_an_image_of_extreme_aspect_is_refused_before_resizing(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    strip = tmp_path / "strip.png"  # 4 x 5,000,000 px: resized to 32 px high, 1.3 GB of floats
    Image.new("L", (5_000_000, 4)).save(strip)
    before = snapshot(tiny_run)
    code, _, err = run_cli(["query", str(strip), "--run", str(tiny_run)], capsys)
    assert_one_line_error(
        code, err, str(strip), "5000000x4 px, sides more than 100:1", before=before,
        roots=(tiny_run,),
    )  # fmt: skip


def test_a_markup_query_path_that_does_not_exist(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "a[/b].png")
    before = snapshot(tiny_run)
    code, _, err = run_cli(["query", missing, "--run", str(tiny_run)], capsys)
    assert_one_line_error(code, err, missing, "does not exist", before=before, roots=(tiny_run,))


def test_a_markup_file_name_in_a_data_folder(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "data" / "a[" / "b].png"  # the file "b].png" in the folder "a[": a[/b].png
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a png [/b] [red]")
    before = snapshot(tiny_run, tmp_path / "data")
    code, _, err = run_cli(["query", str(bad), "--run", str(tiny_run)], capsys)
    assert_one_line_error(code, err, str(bad), before=before, roots=(tiny_run, tmp_path / "data"))


def test_markup_and_emoji_class_names_print_as_they_are(
    tiny_run: Path, hostile_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        ["query", query_image(hostile_data), "--run", str(tiny_run), "-k", "3"], capsys
    )
    assert code == 0, err
    for name in HOSTILE_CLASSES:
        assert name in out


def test_a_usage_error_with_markup_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["systems", "--classes", "x[/b]"], capsys)
    assert code == 2 and "Traceback" not in err and "Invalid value" in err


def non_utf8_file(folder: Path, content: bytes) -> str:
    """A file named ``bad\\xff.png`` in ``folder``, as the str argv would hold (surrogates)."""
    name = os.path.join(os.fsencode(folder), b"bad\xff.png")
    try:
        with open(name, "wb") as f:
            f.write(content)
    except OSError as exc:  # e.g. a file system that only takes UTF-8 names
        pytest.skip(f"this file system refuses a non-UTF-8 file name: {exc}")
    return os.fsdecode(name)


def test_a_non_utf8_file_name(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = non_utf8_file(tmp_path, b"\x89PNG but truncated")
    before = snapshot(tiny_run, tmp_path)
    code, _, err = run_cli(["query", path, "--run", str(tiny_run)], capsys)
    assert_one_line_error(
        code, err, f"{tmp_path}/bad\\xff.png", before=before, roots=(tiny_run, tmp_path)
    )


def test_query_json_of_a_non_utf8_file_name_is_strict_utf8_json(
    tiny_run: Path, hostile_data: Path, tmp_path: Path
) -> None:
    """Real argv and stdout bytes: the answer parses as strict UTF-8 JSON, the byte shown as
    the text ``\\xff`` (as in the CLI's messages)."""
    image = non_utf8_file(tmp_path, Path(query_image(hostile_data)).read_bytes())
    cmd = [sys.executable, "-m", "lscindex_cli.main", "query", os.fsencode(image)]
    done = subprocess.run([*cmd, "--run", str(tiny_run), "--json"], capture_output=True)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.decode("utf-8", errors="strict"))
    assert answer["results"][0]["image"] == f"{tmp_path}/bad\\xff.png"


def test_a_non_utf8_markup_path_through_the_console_script(tmp_path: Path) -> None:
    """Real argv decoding and real stderr: the bytes come back as ``\\xff``, markup as text."""
    missing = os.path.join(os.fsencode(tmp_path), b"run\xff[/b]")
    cmd = [sys.executable, "-m", "lscindex_cli.main", "plot", missing]
    plain = subprocess.run(cmd, capture_output=True)
    assert plain.returncode == 1
    assert plain.stderr.decode().strip().splitlines() == [
        f"error: {tmp_path}/run\\xff[/b] has no metrics.jsonl; pass run directories made by "
        f"lscindex train"
    ]
    debug = subprocess.run([*cmd, "--debug"], capture_output=True)
    assert debug.returncode == 1 and b"Traceback" in debug.stderr
    assert b"RunError" in debug.stderr


# -- the file system: full, read-only, denied ----------------------------------------------------


@pytest.fixture
def metrics_run(tmp_path: Path) -> Path:
    """A run with just its config.json and metrics.jsonl: enough for lscindex plot."""
    return make_plot_run(tmp_path, "run", "lsc", 2)


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[bool]:
    """Mount a tmpfs at ``path`` (True), or yield False where that is not allowed."""
    path.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mount = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
        mounted = subprocess.run(mount, capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted and subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fail_writes(monkeypatch: pytest.MonkeyPatch, code: int, *, filename: bool = True) -> None:
    """Make the library's atomic file writes fail with ``code`` (where no real mount can)."""
    import lscindex._io

    def write(path: str | os.PathLike[str], data: bytes) -> None:
        raise OSError(code, os.strerror(code), *([str(path)] if filename else []))

    monkeypatch.setattr(lscindex._io, "atomic_write_bytes", write)


def test_a_full_disk(
    metrics_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = tmp_path / "disk"
    with tmpfs(disk, "size=16k") as mounted:
        if not mounted:
            fail_writes(monkeypatch, errno.ENOSPC, filename=False)
        (disk / "curves.png").write_bytes(b"the old plot")
        before = snapshot(disk, metrics_run)
        out = str(disk / "curves.png")
        code, _, err = run_cli(["plot", str(metrics_run), "--out", out], capsys)
        # A write() on a full disk names no file: the error names the command's --out.
        assert_one_line_error(
            code,
            err,
            f"no space left on device writing {out}",
            f"free space on {disk}",
            before=before,
            roots=(disk, metrics_run),
        )
        if mounted:
            assert sorted(p.name for p in disk.iterdir()) == ["curves.png"]  # no temp left


def test_a_read_only_file_system(
    metrics_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = tmp_path / "ro"
    with tmpfs(disk, "size=1m") as mounted:
        (disk / "curves.png").write_bytes(b"the old plot")
        if mounted:
            remount = ["mount", "-o", "remount,ro", str(disk)]
            mounted = subprocess.run(remount, capture_output=True).returncode == 0
        if not mounted:
            fail_writes(monkeypatch, errno.EROFS)
        before = snapshot(disk, metrics_run)
        code, _, err = run_cli(
            ["plot", str(metrics_run), "--out", str(disk / "curves.png")], capsys
        )
        assert_one_line_error(
            code,
            err,
            str(disk),
            "is on a read-only file system",
            "choose another --out",
            before=before,
            roots=(disk, metrics_run),
        )


def test_permission_denied(
    metrics_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "curves.png").write_bytes(b"the old plot")
    before = snapshot(locked, metrics_run)
    if os.geteuid() == 0:  # root writes through 0555
        fail_writes(monkeypatch, errno.EACCES)
    locked.chmod(0o555)
    try:
        code, _, err = run_cli(
            ["plot", str(metrics_run), "--out", str(locked / "curves.png")], capsys
        )
    finally:
        locked.chmod(0o755)
    assert_one_line_error(
        code, err, f"permission denied: {locked}", before=before, roots=(locked, metrics_run)
    )


def test_debug_lets_the_os_error_through(
    metrics_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_writes(monkeypatch, errno.ENOSPC)
    with pytest.raises(OSError, match="No space left on device"):
        main(["plot", str(metrics_run), "--out", str(tmp_path / "c.png"), "--debug"])


# -- errors of the libraries underneath ----------------------------------------------------------


@pytest.fixture(scope="module")
def indexed_run(
    tiny_run: Path, hostile_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """A copy of ``tiny_run`` (embedding records the store in it) and a flat-indexed store."""
    from lscindex.embedding import build_store
    from lscindex.index import build_index

    root = tmp_path_factory.mktemp("indexed")
    run = Path(shutil.copytree(tiny_run, root / "run"))
    store = root / "emb.zarr"
    build_store(run, [hostile_data / "val"], store, batch_size=4, workers=0)
    build_index(store)
    return run, store


def _craft_a_huge_count(index: Path) -> None:
    """Make the flat index claim 7 GiB of vectors in its few-KB file; the sidecar's sha256 is
    recomputed, as a forger would."""
    import hashlib
    import struct

    data = bytearray(index.read_bytes())
    at = data.find(b"IxFI") + 4 + 4 + 8 + 8 + 8 + 1 + 4  # fourcc, d, ntotal, 2 dummies, ...
    assert struct.unpack_from("<Q", data, at)[0] < len(data)  # the codes' count, as written
    struct.pack_into("<Q", data, at, 7 * 2**30 // 4)
    index.write_bytes(bytes(data))
    side = index.with_name(index.name + ".json")
    meta = json.loads(side.read_text())
    meta["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    side.write_text(json.dumps(meta))


@pytest.mark.parametrize("command", ["verify", "query"])
def test_an_index_claiming_gigabytes_is_refused_without_allocating_them(
    command: str, indexed_run: tuple[Path, Path], hostile_data: Path, tmp_path: Path
) -> None:
    run, store = indexed_run
    crafted = tmp_path / "emb.zarr"
    shutil.copytree(store, crafted)
    for name in ("emb.faiss", "emb.faiss.json"):
        shutil.copy(store.with_name(name), tmp_path / name)
    _craft_a_huge_count(tmp_path / "emb.faiss")
    args = {
        "verify": ["verify", str(tmp_path / "emb.faiss")],
        "query": ["query", query_image(hostile_data), "--run", str(run), "--store", str(crafted)],
    }[command]
    # VmHWM, not ru_maxrss: the latter keeps the RSS the forking test process had
    script = (
        "import re, sys\n"
        "from lscindex_cli.main import main\n"
        "try:\n    main(sys.argv[1:])\n"
        "finally:\n"
        "    status = open('/proc/self/status').read()\n"
        "    print('peak', re.search(r'VmHWM:\\s+(\\d+)', status)[1], file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300
    )
    *lines, peak = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "it asks for more memory than a " in lines[0], proc.stderr
    assert "damaged or crafted); rebuild it with lscindex index" in lines[0]
    assert int(peak.split()[1]) < 1_500_000  # KiB: far from the 7 GiB the file claims


FAISS_ERROR = (
    "Error in faiss::Index* faiss::read_index(faiss::IOReader*, int) at "
    '/project/faiss/faiss/impl/index_read.cpp:1044: Index type 0x4a4a4a4a ("JJJJ") not '
    "recognized"
)


def test_a_faiss_error_is_one_line(
    indexed_run: tuple[Path, Path],
    hostile_data: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import faiss

    def read_index(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(FAISS_ERROR)

    monkeypatch.setattr(faiss, "read_index", read_index)
    run, store = indexed_run
    before = snapshot(run, store.parent)
    args = ["query", query_image(hostile_data), "--run", str(run), "--store", str(store)]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(
        code,
        err,
        'Index type 0x4a4a4a4a ("JJJJ") not recognized',
        before=before,
        roots=(run, store.parent),
    )
    with pytest.raises(Exception, match="JJJJ"):  # --debug: the traceback
        main([*args, "--debug"])


def test_a_factory_faiss_cannot_parse_is_one_line(
    indexed_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, store = indexed_run
    before = snapshot(run, store.parent)
    out = tmp_path / "bad.faiss"
    code, _, err = run_cli(
        ["index", str(store), "--factory", "Bogus[/b]", "--out", str(out)], capsys
    )
    assert_one_line_error(code, err, "Bogus[/b]", before=before, roots=(run, store.parent))
    assert not out.exists()


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("HNSW0", "HNSW M of 0 in 'HNSW0'"),  # FAISS: SIGABRT
        ("HNSW1", "HNSW M of 1 in 'HNSW1'"),  # FAISS: SIGSEGV
        ("HNSW999999", "HNSW M of 999999"),  # FAISS: a 2.4 GB index for a few hundred rows
        ("IVF0,Flat", "IVF nlist of 0"),
        ("IVF1000000000,Flat", "IVF nlist of 1000000000"),  # FAISS: bad_alloc
        ("IVF4,PQ3x0", "PQ bits of 0"),  # FAISS: SIGSEGV
        ("NSG0", "NSG R of 0"),
        ("RR0,Flat", "output dim of 0 in 'RR0,Flat'"),
    ],
)
def test_factory_parameters_faiss_would_crash_on_are_refused_first(
    factory: str,
    expected: str,
    indexed_run: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, store = indexed_run
    before = snapshot(run, store.parent)
    out = tmp_path / "bad.faiss"
    code, _, err = run_cli(["index", str(store), "--factory", factory, "--out", str(out)], capsys)
    assert_one_line_error(code, err, expected, before=before, roots=(run, store.parent))
    assert not out.exists()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device", b"/x/bad\xff"), "/x/bad\udcff"),
        (json.JSONDecodeError("Expecting value", "{", 1), "line 1 column 2"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not UTF-8"),
        (MemoryError(), "out of memory"),
        (RuntimeError(FAISS_ERROR), 'faiss: Index type 0x4a4a4a4a ("JJJJ") not recognized'),
        (KeyError("model"), None),  # a bug in lscindex: its traceback stays
        (RuntimeError("CUDA kernel failed"), None),
        (TypeError("unsupported operand"), None),
    ],
)
def test_which_errors_are_the_users(exc: BaseException, expected: str | None) -> None:
    message = error_message(exc)
    if expected is None:
        assert message is None
    else:
        assert message is not None and expected in message


# -- URLs lscindex cannot open --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "url", "expected"),
    [
        (["embed", "DATA", "--run", "RUN", "--out"], "foo://bucket/emb.zarr", "unknown URL scheme"),
        (["embed", "DATA", "--run", "RUN", "--out"], "gs://bucket/emb.zarr", "pip install gcsfs"),
        (["query", "IMAGE", "--run", "RUN", "--store"], "az://c/emb.zarr", "pip install adlfs"),
        (["query", "IMAGE", "--run", "RUN", "--index"], "foo://b/emb.faiss", "unknown URL scheme"),
        (["index", "s3:/bucket/emb.zarr"], None, "pass it as s3://bucket/emb.zarr"),
        (["verify"], "memory://", "names no object"),
        (["embed", "DATA", "--run", "RUN", "--out"], "file://../x.zarr", "(file:///abs/path)"),
    ],
)
def test_a_url_that_cannot_be_opened_is_one_line_and_nothing_is_written_locally(
    command: list[str],
    url: str | None,
    expected: str,
    tiny_run: Path,
    hostile_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    swap = {"DATA": str(hostile_data), "RUN": str(tiny_run), "IMAGE": query_image(hostile_data)}
    args = [swap.get(word, word) for word in command] + ([url] if url else [])
    before = snapshot(tiny_run)
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, expected, before=before, roots=(tiny_run,))
    assert list(tmp_path.iterdir()) == []  # no ./s3:/bucket/... folder


def test_crafted_recorded_locations_are_not_fetched_unasked(
    indexed_run: tuple[Path, Path],
    hostile_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stores.json or index sidecar naming an ftp:// or http:// address: query skips the
    recorded store at once (no connection attempted), verify of the index is one line saying
    to pass the store."""
    run, store = indexed_run
    crafted_run = tmp_path / "run"
    shutil.copytree(run, crafted_run)
    (crafted_run / "stores.json").write_text(json.dumps([{"path": "ftp://192.0.2.1/emb.zarr"}]))
    start = time.monotonic()
    code, out, err = run_cli(
        ["query", query_image(hostile_data), "--run", str(crafted_run), "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["store"] is None and time.monotonic() - start < 30
    index = tmp_path / "emb.faiss"
    shutil.copy(store.with_name("emb.faiss"), index)
    side = json.loads(store.with_name("emb.faiss.json").read_text())
    side["store"] = "http://192.0.2.1/emb.zarr"
    (tmp_path / "emb.faiss.json").write_text(json.dumps(side))
    code, _, err = run_cli(["verify", str(index)], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert "names store http://192.0.2.1/emb.zarr, a http:// URL lscindex does not open" in err
