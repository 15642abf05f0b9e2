"""Smoke test of benchmarks/train_scaling.py: tiny settings, one subprocess per configuration."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_scaling.py"


def test_train_scaling_benchmark_prints_table_and_summary() -> None:
    args = ["--classes", "100", "2000", "--steps", "2", "--warmup", "1", "--model", "test_resnet"]
    args += ["--batch-size", "8", "--img-size", "32"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "torch threads" in out.splitlines()[0]
    rows = [line for line in out.splitlines() if re.match(r"\| [\d,]+ \| (lsc|ce) \|", line)]
    assert [tuple(r.split("|")[1:3]) for r in rows] == [
        (" 100 ", " lsc "),
        (" 100 ", " ce "),
        (" 2,000 ", " lsc "),
        (" 2,000 ", " ce "),
    ]
    assert all("failed" not in r for r in rows)
    # The ce head is n_classes wide; the lsc head is n_min(v21) wide (7 for 100, 17 for 2,000).
    assert [r.split("|")[3].strip() for r in rows] == ["7", "100", "17", "2,000"]
    summary = re.search(
        r"^LSC 2k/100 step time [\d.]+ \(target <= 1\.10\), peak RSS [\d.]+ \(target within 5%\), "
        r"CE/LSC step time at 2k [\d.]+ \(target >= 10\)$",
        out,
        flags=re.MULTILINE,
    )
    assert summary is not None, out
