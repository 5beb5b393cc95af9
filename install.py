"""Run by the WebUI at every start-up: quick, idempotent, never touches torch, never breaks the host.

Both A1111 and Forge already ship everything ASAG needs (torch, einops); this only checks, and installs
einops through the host's own pip helper in the unlikely case it is missing.
"""

from __future__ import annotations

import importlib.util

REQUIRED = {"einops": "einops"}  # Forge pins einops 0.4.1; any version has what ASAG uses


def missing_packages() -> list[str]:
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def main() -> None:
    missing = missing_packages()
    if not missing:
        return
    try:
        import launch  # the host's start-up module; absent when this file is run by hand

        for name in missing:
            launch.run_pip(f"install {REQUIRED[name]}", f"{name} for ASAG")
    except Exception as exc:  # never let an install problem stop the WebUI from starting
        print(f"ASAG: missing {', '.join(missing)} ({exc}); install with: pip install "
              + " ".join(REQUIRED[name] for name in missing))


try:
    main()
except Exception as exc:  # pragma: no cover - last line of defence for the host's start-up
    print(f"ASAG: install check skipped ({exc})")
