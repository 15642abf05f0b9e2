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


def cli_lines() -> list[tuple[str, str]]:
    return [
        (name, line.strip())
        for name, body in blocks("bash")
        for line in body.splitlines()
        if line.strip().startswith("lscindex ")
    ]


@pytest.mark.parametrize(("doc", "line"), cli_lines())
def test_documented_cli_commands_run(doc: str, line: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    try:
        main(shlex.split(line)[1:])
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
