"""The benchmark in its tiny smoke configuration: it runs, and its query counts are right.

A benchmark is a script, not a timed test: nothing here judges speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import backend_url

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
