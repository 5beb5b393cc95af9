"""Render the JSON-lines reports of real-host runs (ASAG_A1111_REPORT) as one markdown table.

    python -m tests.realhost.report LABEL=REPORT.jsonl[,MORE.jsonl] [LABEL=REPORT.jsonl ...]

One row per configuration, one result column per labelled run (e.g. `main=…jsonl i9=…jsonl`); the
last line of a configuration in a file wins. A result is "ok" or the first problem, shortened.
"""

from __future__ import annotations

import json
import sys


def load(path: str) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[row["config"]] = row
    return rows


def cell(row: dict | None, width: int = 160) -> str:
    if row is None:
        return "not run"
    if row["ok"]:
        return "ok"
    text = "; ".join(row["problems"])
    text = text if len(text) <= width else text[: width - 1] + "…"
    return "**FAIL**: " + text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str]) -> None:
    runs = []
    for label, _, paths in (arg.partition("=") for arg in argv):
        rows: dict[str, dict] = {}
        for path in paths.split(","):
            rows.update(load(path))
        runs.append((label, rows))
    configs: list[str] = []
    for _, rows in runs:
        configs += [c for c in rows if c not in configs]
    labels = [f"{label} ({next(iter(rows.values()))['asag'][:8]})" if rows else label for label, rows in runs]
    hosts = sorted({row["webui"][:8] for _, rows in runs for row in rows.values()})
    print(f"| configuration | host (A1111 commit) | {' | '.join(labels)} |")
    print("|---|---|" + "---|" * len(runs))
    for config in configs:
        dates = [rows[config]["time"][:10] for _, rows in runs if config in rows]
        host = next(rows[config]["webui"][:8] for _, rows in runs if config in rows)
        cells = [cell(rows.get(config)) for _, rows in runs]
        print(f"| {config} | 1.10.1 `{host}`, {max(dates)} | {' | '.join(cells)} |")
    if len(hosts) > 1:
        print(f"\n(hosts differ between runs: {hosts})")


if __name__ == "__main__":
    main(sys.argv[1:])
