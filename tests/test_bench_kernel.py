"""bench/kernel.py's repeated runs (`--runs K`): K fresh processes, one column each, and their median.

Timing is not asserted (that is the benchmark's job); the plumbing is: every implementation gets a row,
SDPA's ratio to itself is 1 in every run, and the median is the median of the runs' columns.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "kernel.py"


def test_repeated_runs_tabulate_each_process_and_the_median():
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--only", "N=1024", "--runs", "3", "--threads", "1"],
                         capture_output=True, text=True, check=True, timeout=300)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in res.stdout.splitlines()
            if line.startswith("| N=1024")]
    assert [r[1] for r in rows] == ["sdpa", "dense", "logdomain", "ours"]
    for _, name, *runs, median in rows:
        values = [float(x) for x in runs]
        assert len(values) == 3 and all(v > 0 for v in values)
        assert abs(float(median.strip("*")) - statistics.median(values)) <= 0.006  # printed with 2 decimals
        if name == "sdpa":
            assert values == [1.0, 1.0, 1.0]
    assert res.stderr.count("done;") == 3
