"""`scripts/reliability.py --fast`: one table, every must-be-0 row at 0, exit status 0; and a
must-be-0 row that is not 0 fails the run."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import conftest as fx
import pytest

SCRIPT = fx.ROOT / "scripts" / "reliability.py"
REQUIRED_ROWS = ("faults injected", "faults survived", "cases lost", "duplicates",
                 "hostile inputs tried", "tracebacks", "cross-tenant leaks", "load held")
MUST_BE_ZERO = ("cases lost", "duplicates", "tracebacks", "cross-tenant leaks",
                "writes outside data folder", "hostile inputs mishandled")


def rows(table: str) -> dict[str, list[str]]:
    """check -> [value, must, notes...] for every row of the printed table."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("check "))
    out = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        check, *rest = re.split(r"\s{2,}", line.strip())
        out[check] = rest
    return out


@pytest.mark.integration
def test_the_fast_run_prints_one_table_and_passes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--fast", "--keep", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stdout.count("TruthGuard reliability (--fast)") == 1
    table = rows(done.stdout)
    assert set(REQUIRED_ROWS) <= set(table), table
    for check in MUST_BE_ZERO:
        assert table[check][:2] == ["0", "0"], (check, table[check])
    injected, survived = table["faults injected"][0], table["faults survived"][0]
    assert int(injected) > 10 and survived == injected
    assert int(table["hostile inputs tried"][0].replace(",", "")) >= 100
    assert "result: passed" in done.stdout and "FAIL" not in done.stdout


@pytest.fixture
def script() -> Iterator[ModuleType]:
    """The script as a module (its imports are this suite's, already loaded)."""
    saved = sys.modules.get("conftest")
    sys.modules["conftest"] = fx  # the script imports this suite's helpers by that name
    spec = importlib.util.spec_from_file_location("reliability_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        if saved is not None:
            sys.modules["conftest"] = saved


def test_a_must_be_zero_row_above_zero_fails_the_run(script: ModuleType) -> None:
    report = script.Report(fast=True)
    report.tally("leaks", 0, "pipeline")
    report.zero_row("cross-tenant leaks", "leaks", "share of other tenants' chunks")
    report.add("load held", "skipped")
    assert not report.failed and "result: passed" in report.render()

    report.tally("lost", 1, "crash run 3")
    report.zero_row("cases lost", "lost", "cases without a result")

    assert report.failed
    rendered = report.render()
    assert "result: FAILED" in rendered
    assert rows(rendered)["cases lost"][:2] == ["1", "0"]
    assert "FAIL" in next(line for line in rendered.splitlines() if line.startswith("cases lost"))
