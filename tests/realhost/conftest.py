"""Real-host fixtures: skipped unless ASAG_A1111_HOST names a built A1111 harness.

Environment:
  ASAG_A1111_HOST        the harness (run-api.sh, webui/, venv/), e.g. /work/hosts/a1111
  ASAG_A1111_EXTENSION   the ASAG checkout under test (default: this repository)
  ASAG_A1111_EXTRAS      a folder of third-party extensions (one clone per subfolder, see
                         install_extras.py); the third-party tests skip without it
  ASAG_A1111_PORT        first of four ports (default 7870): with-ASAG server, bare server, and the
                         same two with the third-party extensions

Two servers: `asag` (ASAG + ControlNet [+ extras]) and `bare` (the same without ASAG), started once
per session (per module for the pair with extras). The basetemp should be private
(`--basetemp DIR`): pytest prunes old /tmp/pytest-of-USER/pytest-N folders of every run on the machine,
which holds the servers' data dirs. "ASAG off is byte-identical to the extension absent" compares the two.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realhost.harness import Server

REPO = Path(__file__).resolve().parents[2]


def host_dir() -> Path | None:
    value = os.environ.get("ASAG_A1111_HOST")
    if not value:
        return None
    path = Path(value)
    return path if (path / "run-api.sh").is_file() and (path / "webui" / "launch.py").is_file() else None


def extras_dir() -> Path | None:
    value = os.environ.get("ASAG_A1111_EXTRAS")
    return Path(value) if value and Path(value).is_dir() else None


def _extensions(host: Path, with_asag: bool, extras: Path | None) -> dict[str, Path]:
    found = {"sd-webui-controlnet": host / "webui" / "extensions" / "sd-webui-controlnet"}
    if extras is not None:
        found.update({child.name: child for child in sorted(extras.iterdir()) if child.is_dir()})
    if with_asag:
        found["asag"] = Path(os.environ.get("ASAG_A1111_EXTENSION", REPO)).resolve()
    return found


def _pair(tmp_path_factory: pytest.TempPathFactory, extras: Path | None, offset: int) -> Iterator[tuple[Server, Server]]:
    host = host_dir()
    if host is None:
        pytest.skip("set ASAG_A1111_HOST to a built A1111 harness (shared/hosts-build/a1111) to run real-host checks")
    port = int(os.environ.get("ASAG_A1111_PORT", "7870")) + offset
    servers = [Server(host, tmp_path_factory.mktemp(name), port + i, _extensions(host, name == "asag", extras))
               for i, name in enumerate(("asag", "bare"))]
    try:
        for server in servers:
            server.start()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """(server with ASAG, server without) with ControlNet only, on the first two ports."""
    yield from _pair(tmp_path_factory, None, 0)


@pytest.fixture(scope="module")
def hosts_extras(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """(server with ASAG, server without), both with the third-party extensions of ASAG_A1111_EXTRAS,
    on the next two ports."""
    extras = extras_dir()
    if extras is None:
        pytest.skip("set ASAG_A1111_EXTRAS to a folder of third-party extensions (tests/realhost/install_extras.py)")
    yield from _pair(tmp_path_factory, extras, 2)
