"""Prepare a work tree for running pipelines: DVC remote and DVC-tracked data.

Run by ``make setup`` (idempotent, quick when all is in place):

1. ``dvc init`` if the repository has no ``.dvc/`` yet;
2. a default local-directory remote in ``.dvc/config.local`` (not committed: the
   directory is this machine's), unless a default remote is already configured;
3. every ``data/*.dvc`` output present in the work tree: pulled from the remote, or, on a
   machine whose remote is still empty, restored from the small seed copy committed in
   ``data/seed/`` (verified against the md5 in the ``.dvc`` file) and pushed, so the
   remote then holds it.

    python -m pipelines.workspace --remote ~/.cache/slipway/dvc-remote
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from components.io import file_hash


def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True,
                          check=check)


def ensure_remote(remote: Path) -> str:
    if not Path(".dvc").is_dir():
        _dvc("init", "--quiet")
    answer = _dvc("remote", "default", check=False)
    current = answer.stdout.strip() if answer.returncode == 0 else ""
    if current and "no default remote" not in current.lower():
        return f"DVC remote: {current} (already configured)"
    remote.mkdir(parents=True, exist_ok=True)
    _dvc("remote", "add", "--local", "--default", "--force", "local", str(remote))
    return f"DVC remote: local -> {remote} (set in .dvc/config.local)"


def ensure_data(data_dir: Path = Path("data")) -> list[str]:
    notes = []
    for dvc_file in sorted(data_dir.glob("*.dvc")):
        out = yaml.safe_load(dvc_file.read_text())["outs"][0]
        target = dvc_file.parent / out["path"]
        if target.exists():
            continue
        if _dvc("pull", "--quiet", str(dvc_file), check=False).returncode == 0 and target.exists():
            notes.append(f"pulled {target} from the DVC remote")
            continue
        seed = data_dir / "seed" / out["path"]
        if not seed.is_file() or file_hash(seed, "md5") != out["md5"]:
            raise SystemExit(
                f"error: {target} is not in the DVC remote and has no matching seed copy\n"
                f"  fix: configure the remote that holds it (dvc remote add -d ...) and run "
                f"`dvc pull {dvc_file}`"
            )
        shutil.copyfile(seed, target)
        _dvc("commit", "--quiet", "--force", str(dvc_file))
        pushed = _dvc("push", "--quiet", str(dvc_file), check=False).returncode == 0
        notes.append(f"restored {target} from {seed} (md5 verified)"
                     + ("; pushed to the DVC remote" if pushed else ""))
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remote", required=True, type=Path,
                        help="directory for the default DVC remote")
    args = parser.parse_args(argv)
    if not Path(".git").exists():
        print("setup: not a git work tree; DVC steps skipped (clone the repository to use DVC)")
        return 0
    print(f"setup: {ensure_remote(args.remote.expanduser())}")
    for note in ensure_data():
        print(f"setup: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
