"""Every command and snippet in README.md, docs/ and examples/ runs as written."""

from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lscindex_cli.main import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for body in re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S):
            found.append((path.name, body))
    return found


# Documented commands run as written, with these flags appended (later flags win) so that the
# suite stays fast: tiny models, a few steps, a small glyph set.
FAST = {
    "data glyphs": ["--classes", "12", "--size", "16"],
    "train": [
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
    ],
}


def doc_commands() -> list[tuple[str, list[str]]]:
    """Per document, its shell commands in order (the README's two setup commands excluded)."""
    found = []
    for path in DOCS:
        lines = []
        for body in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            for line in body.splitlines():
                line = line.split("#", 1)[0].strip()
                if line.startswith(("lscindex ", "torchrun ")):
                    lines.append(line)
        if lines:
            found.append((path.name, lines))
    return found


def with_fast_flags(args: list[str]) -> list[str]:
    for prefix, extra in FAST.items():
        words = prefix.split()
        if args[: len(words)] == words:
            return args + extra
    return args


@pytest.mark.parametrize(("doc", "lines"), doc_commands(), ids=[d for d, _ in doc_commands()])
def test_documented_commands_run(doc: str, lines: list[str], tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    for line in lines:
        words = shlex.split(line)
        if words[0] == "torchrun":
            at = words.index("lscindex")
            cmd = [
                str(bindir / "torchrun"),
                *words[1:at],
                str(bindir / "lscindex"),
                *with_fast_flags(words[at + 1 :]),
            ]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{doc}: {line!r}\n{proc.stderr[-3000:]}"
            continue
        try:
            main(with_fast_flags(words[1:]))
        except SystemExit as exc:
            assert exc.code in (0, None), f"{doc}: {line!r} exited {exc.code}"


@pytest.mark.parametrize(("doc", "code"), blocks("python"))
def test_documented_python_snippets_run(doc: str, code: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, doc, "exec"), {"__name__": "__doc__"})


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_run(script: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(script), run_name="__main__")
    assert capsys.readouterr().out


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)[:2]
    assert "scripts/quickstart.sh" in first_blocks[0]
    assert "pytest" in first_blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert first_blocks[1].strip() in ci


def test_quickstart_script_runs() -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "quickstart.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Vector systems for 600,000 classes" in result.stdout
    assert "top-1 1.000" in result.stdout


def test_decode_benchmark_runs_on_a_small_setting() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "decode.py"),
            "--classes",
            "500",
            "--queries",
            "400",
            "--faiss-queries",
            "200",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| 500 | 12 |" in result.stdout and "100.000%" in result.stdout
