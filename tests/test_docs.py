"""Every command and snippet in README.md and docs/, and every example, runs as written.

Each document runs top to bottom (shell lines and python blocks in order, each python block saved
as a script and run with ``python script.py``, as a reader would run it) in a fresh folder;
documents that use artefacts without making them (e.g. the store format) start from a small
workspace laid out like the README's: data/glyphs, runs/glyphs, emb.zarr, emb.faiss.
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from s3_server import make_bucket, moto_server, s3_environment

from lscindex.store import open_store
from lscindex_cli.main import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

# Documented commands run as written, with these flags appended (later flags win) so the suite
# stays fast: tiny models, a few steps, a small glyph set.
FAST = {
    ("data", "glyphs"): ["--classes", "12", "--size", "16"],
    ("data", "instances"): ["--classes", "12", "--size", "16", "--shard-rows", "20"],
    ("train",): [
        "--model",
        "test_resnet",
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--img-size",
        "16",
    ],
    ("embed",): ["--workers", "0"],
    ("eval",): ["--workers", "0"],
}
# Benchmark scripts shown in the docs run with small settings appended (later flags win).
FAST_SCRIPTS = {
    "benchmarks/decode.py": "--classes 500 --queries 400 --faiss-queries 200 --repeats 1",
    "benchmarks/train_scaling.py": "--classes 100 2000 --steps 2 --warmup 1 --model test_resnet "
    "--batch-size 8 --rounds 1",
    "benchmarks/embed.py": "--images 300 --model test_resnet --repeats 1 --batch-size 32 "
    "--workers 0",
    "benchmarks/embed_resume.py": "--images 300 --kills 2 --chunk-rows 32",
    "benchmarks/convergence_probe.py": "--epochs 1 --model test_resnet --bs 8",
    "benchmarks/convergence.py": "--model test_resnet --epochs 1 --batch-size 8 --only v21-data "
    "v21-codec ce --max-steps 2 --workers 0 --img-size 16",
    "benchmarks/index_auto.py": "--rows 20000 --max-memory-mib 2 --queries 500 --repeats 1",
    "benchmarks/serve_load.py": "--clients 4 --requests 24 --rounds 1 --model test_resnet "
    "--classes 12",
}


def steps(path: Path) -> list[tuple[str, str]]:
    """("shell", line) and ("python", block) in document order; the README's setup excluded."""
    found = []
    blocks = re.findall(r"```(bash|python)\n(.*?)```", path.read_text(), flags=re.S)
    if path.name == "README.md":
        blocks = blocks[2:]  # the two setup commands: quickstart and CI run them
    for language, body in blocks:
        if language == "python":
            found.append(("python", body))
            continue
        for line in body.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith(("lscindex ", "torchrun ", "python ")):
                found.append(("shell", line))
    return found


def with_fast_flags(args: list[str]) -> list[str]:
    for prefix, extra in FAST.items():
        if tuple(args[: len(prefix)]) == prefix:
            return args + extra
    return args


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for line in (
            "lscindex data glyphs data/glyphs",
            "lscindex train data/glyphs --out runs/glyphs",
            "lscindex embed data/glyphs --run runs/glyphs --out emb.zarr",
            "lscindex index emb.zarr",
        ):
            run_shell(line, "workspace")
    finally:
        os.chdir(cwd)
    return root


def run_shell(line: str, doc: str) -> None:
    words = shlex.split(line)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    if words[0] == "lscindex":
        try:
            main(with_fast_flags(words[1:]))
        except SystemExit as exc:
            assert exc.code in (0, None), f"{doc}: {line!r} exited {exc.code}"
        return
    if words[0] == "torchrun":
        at = words.index("lscindex")
        cmd = [
            str(BIN / "torchrun"),
            *words[1:at],
            str(BIN / "lscindex"),
            *with_fast_flags(words[at + 1 :]),
        ]
    else:  # python examples/... or benchmarks/...: run from the project root's files
        fast = FAST_SCRIPTS.get(words[1], "").split()
        cmd = [sys.executable, str(ROOT / words[1]), *words[2:], *fast]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{doc}: {line!r}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("doc", [d for d in DOCS if steps(d)], ids=lambda d: d.name)
def test_document_runs_top_to_bottom(
    doc: Path, workspace: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path / "w"
    todo = steps(doc)
    if any("data glyphs" in text for kind, text in todo if kind == "shell"):
        work.mkdir()
    else:
        shutil.copytree(workspace, work, symlinks=True)
    monkeypatch.chdir(work)
    with ExitStack() as stack:
        buckets = sorted({b for _, text in todo for b in re.findall(r"s3://([a-z0-9.-]+)/", text)})
        if buckets:  # a real S3 server holding the buckets the document names
            import s3fs

            endpoint = stack.enter_context(moto_server(tmp_path / "moto.log"))
            stack.callback(s3fs.S3FileSystem.clear_instance_cache)  # clients of this server
            for key, value in s3_environment(endpoint).items():
                monkeypatch.setenv(key, value)
            for bucket in buckets:
                make_bucket(bucket)
        run_steps(todo, doc, tmp_path)


def run_steps(todo: list[tuple[str, str]], doc: Path, tmp_path: Path) -> None:
    for number, (kind, text) in enumerate(todo):
        if kind == "shell":
            if "--fonts system" in text:
                # Planning the CJK set renders every glyph of ~175 installed faces (~5 minutes
                # on 2 cores): too slow for the suite. tests/test_glyphs.py covers
                # --fonts with a folder of fonts instead.
                continue
            run_shell(text, doc.name)
        else:
            run_python(text, doc.name, tmp_path / f"{doc.stem}_{number}.py")


def run_python(code: str, doc: str, script: Path) -> None:
    """Save a python block as ``script`` and run ``python script`` here, as a reader would.

    Not exec'd in this process: a block that starts worker processes (the glyph builder's
    spawn pool) only works from a file under a ``__main__`` guard, which exec would not check.
    """
    script.write_text(code)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{doc}: python block\n{code}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_run(script: Path, tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "work")])
    runpy.run_path(str(script), run_name="__main__")
    assert capsys.readouterr().out


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first = re.findall(r"```bash\n(.*?)```", text, flags=re.S)[:2]
    assert text.index("```bash") < 200  # right at the top
    assert "scripts/quickstart.sh" in first[0]
    assert "pytest" in first[1]
    assert first[1].strip() in (ROOT / ".ci" / "run").read_text()


def test_quickstart_script_runs(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        LSCINDEX_QUICKSTART_FAST="1",
        LSCINDEX_WORKDIR=str(tmp_path),
    )
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "quickstart.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "val top-1" in result.stdout and "nearest stored items" in result.stdout


def test_decode_benchmark_runs_on_a_small_setting() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "decode.py"),
            *FAST_SCRIPTS["benchmarks/decode.py"].split(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| 500 | 12 |" in result.stdout and "100.000%" in result.stdout


# results.md's 600k-class commands on two small pip-font instance sets: (old, new) in order.
SMALL_600K = [
    ("--fonts system ", ""),
    ("--classes 1000 600000", "--classes 12 20"),
    ("1000=data/inst1k 600000=data/inst600k", "12=data/inst1k 20=data/inst600k"),
    ("--classes 600000", "--classes 20"),
    ("--classes 1000", "--classes 12"),
    ("val-00000-of-00012.parquet", "val-00000-of-00001.parquet"),  # 20 rows: one val shard
]
SMALL_600K_SCRIPTS = {
    "benchmarks/decode.py": "--queries 10 --faiss-queries 10 --repeats 1",
    "benchmarks/train_scaling.py": "--steps 2 --warmup 1 --model test_resnet --batch-size 8 "
    "--img-size 16 --rounds 1",
}


def console_lines(doc: Path, section: str) -> list[str]:
    """The ``$ `` commands of the console blocks of one ``## `` section of ``doc``."""
    text = doc.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def test_600k_section_runs_on_small_instance_sets(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every command of results.md's "600k classes", as written but on 20 and 12 classes of
    the pip fonts, tiny models and a few steps (the real run is a documented benchmark)."""
    lines = console_lines(ROOT / "docs" / "results.md", "600k classes")
    assert any(line.startswith("lscindex embed") for line in lines)
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for line in lines:
        if line.startswith("bash scripts/install-cjk-fonts.sh"):
            continue  # the suite does not install fonts; the pip fonts stand in for them
        for old, new in SMALL_600K:
            line = line.replace(old, new)
        words = shlex.split(line)
        if words[0] == "mkdir":  # a shell line: the training split alone, by symlinks
            subprocess.run(["bash", "-c", line], check=True)
            continue
        if words[0] == "python":
            fast = SMALL_600K_SCRIPTS[words[1]].split()
            cmd = [sys.executable, str(ROOT / words[1]), *words[2:], *fast]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{line!r}\n{proc.stderr[-3000:]}"
            continue
        assert words[0] == "lscindex", line
        args = words[1:] + (["--size", "16", "--shard-rows", "20"] if words[1] == "data" else [])
        with pytest.raises(SystemExit) as done:
            main(with_fast_flags(args) if words[1] != "data" else args)
        assert done.value.code in (0, None), line
    assert len(open_store(tmp_path / "runs" / "val600k.zarr")) == 20  # the val split only
    assert (tmp_path / "runs" / "ce600k" / "model.safetensors").is_file()


def test_train_scaling_runs_on_shards(tmp_path: Path) -> None:
    """benchmarks.md's real-image run (data instances, then train_scaling --data), on two small
    pip-font instance sets instead of the CJK ones."""
    for classes in (12, 20):
        out = str(tmp_path / f"inst{classes}")
        with pytest.raises(SystemExit) as done:
            main(["data", "instances", out, "--classes", str(classes), "--size", "16"])
        assert done.value.code in (0, None)
    fast = "--classes 12 20 --steps 2 --warmup 1 --model test_resnet --batch-size 8 --img-size 16"
    data = ["--data", f"12={tmp_path / 'inst12'}", f"20={tmp_path / 'inst20'}"]
    data += ["--loader-workers", "0"]  # as the second run of benchmarks.md
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_scaling.py"), *fast.split(), *data],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "# images: real, from shards (12:" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 20 | lsc |")]
    assert len(rows) == 1 and "failed" not in rows[0]
