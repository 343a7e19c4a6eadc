"""The benchmark in its tiny smoke configuration: it runs, and its query counts are right.

A benchmark is a script, not a timed test: nothing here judges speed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support import REQUIRE_ALL, backend_url

# A smoke run of both benchmarks, about 20 s each.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]


def test_benchmark_smoke_run(tmp_path) -> None:
    for backend in ("postgres", "mysql"):
        backend_url(backend, tmp_path)  # skip, or fail in CI, when a server is down
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--expiry", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio" in result.stdout and "expiry sweep" in result.stdout
    report = json.loads(out.read_text())
    for backend in ("sqlite", "postgres", "mysql"):
        assert report["backends"][backend]["queries"] == {
            "untouched": 0,
            "read": 1,
            "write": 2,
            "new session": 1,
            "hostile cookie": 0,
        }
        sweep = report["expiry"][backend]
        assert sweep["exit_code"] == 0 and sweep["errors"] == 0
        assert sweep["left_expired"] == 0 and sweep["left_rows"] == sweep["rows_expected"]


WRK_REPORT = """\
Running 1s test @ http://127.0.0.1:18129/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.25ms    4.34ms  27.35ms   87.37%
    Req/Sec     1.00k   397.76     1.55k    50.00%
  Latency Distribution
     50%  812.00us
     75%    3.13ms
     90%    9.56ms
     99%    1.02s
  992 requests in 1.00s, 0.85MB read
  Socket errors: connect 0, read 12, write 1, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:    991.04
Transfer/sec:      0.85MB
"""


def test_wrk_report_is_read_with_its_units_and_every_error() -> None:
    from bench.e2e import parse_wrk

    assert parse_wrk(WRK_REPORT) == {
        "rps": 991.04,
        "p50_ms": 0.812,
        "p99_ms": 1020.0,
        "requests": 992,
        "non_2xx": 7,
        "socket_errors": {"connect": 0, "read": 12, "write": 1, "timeout": 3},
        "errors": 23,
    }
    clean = WRK_REPORT.replace("  Socket errors: connect 0, read 12, write 1, timeout 3\n", "")
    assert parse_wrk(clean.replace("  Non-2xx or 3xx responses: 7\n", ""))["errors"] == 0


def test_end_to_end_smoke_run(tmp_path) -> None:
    """Every variant serves both routes through gunicorn and wrk without one error."""
    if shutil.which("wrk") is None:
        message = "wrk is not installed (bash bench/setup.sh installs it; .ci/run does in CI)"
        if REQUIRE_ALL:
            pytest.fail(message + " (STOREDSESSION_REQUIRE_ALL_BACKENDS=1)")
        pytest.skip(message)
    out = tmp_path / "e2e.json"
    command = "--backends sqlite --servers bottle --duration 1 --rounds 1 --warmup 0 --sessions 20"
    result = subprocess.run(
        [sys.executable, "-m", "bench.e2e", *command.split(), "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    cells = {(c["variant"], c["phase"]): c for c in report["cells"]}
    assert set(cells) == {
        (variant, phase)
        for variant in ("bare", "floor", "storedsession", "beaker")
        for phase in ("read", "write")
    }
    for cell in cells.values():
        assert cell["rps"] > 0 and cell["rounds"][0]["requests"] > 0, cell
        # Ours must never fail; the others' errors are figures the table reports (the
        # floor's hand-written SQLite write can meet a busy file on a loaded machine).
        if cell["variant"] == "storedsession":
            assert cell["errors"] == 0, cell
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("bottle ")]
    assert sorted((row[2], row[3]) for row in rows) == sorted(cells)
    # The errors column reports each cell's errors (ours are 0, asserted above).
    assert all(row[7] == str(cells[(row[2], row[3])]["errors"]) for row in rows)
    assert report["versions"]["wrk"].startswith("wrk") and report["machine"]["cpu_count"]
