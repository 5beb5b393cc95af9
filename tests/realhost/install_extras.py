"""Clone the third-party extensions of the real-host checks, at pinned commits, into a folder of yours.

    python -m tests.realhost.install_extras DEST [--mirror DIR]

DEST/<name> gets each extension checked out on a local branch at the pinned commit (A1111 logs a
Traceback for an extension on a detached HEAD). With --mirror, clones come from bare mirrors
DIR/OWNER+NAME/repo; otherwise from GitHub. Point ASAG_A1111_EXTRAS at DEST; never clone these into
a shared WebUI's extensions folder. None of them needs a pip install for the paths used here.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

EXTRAS: dict[str, tuple[str, str]] = {
    # folder: (owner/name, commit)
    "sd-dynamic-thresholding": ("mcmonkeyprojects/sd-dynamic-thresholding", "73e4e04565aa86237d66764ac58ffae1f7e40e48"),
    "sd-webui-regional-prompter": ("hako-mikan/sd-webui-regional-prompter", "be623452203b396ed87b85583a3cfd56e8157214"),
    "multidiffusion-upscaler-for-automatic1111": ("pkuliyi2015/multidiffusion-upscaler-for-automatic1111",
                                                  "22798f6822bc9c8a905b51da8954ee313b973331"),
    "sd-webui-lora-block-weight": ("hako-mikan/sd-webui-lora-block-weight", "b403cb7300f288360023c2a1978b86a361934e24"),
    "sd-webui-incantations": ("v0xie/sd-webui-incantations", "980d63838a2b8c8659a01b242e55551870619d6a"),
}


def install(dest: Path, mirror: Path | None) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for folder, (repo, commit) in EXTRAS.items():
        source = str(mirror / repo.replace("/", "+") / "repo") if mirror else f"https://github.com/{repo}"
        target = dest / folder
        if not target.exists():
            subprocess.run(["git", "clone", "-q", "--no-checkout", source, str(target)], check=True)
        subprocess.run(["git", "-C", str(target), "checkout", "-q", "-B", "asag-pinned", commit], check=True)
        print(f"{folder}: {repo} @ {commit[:12]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--mirror", type=Path)
    args = parser.parse_args()
    install(args.dest, args.mirror)


if __name__ == "__main__":
    main()
