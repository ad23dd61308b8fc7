"""Move datasets and model versions through the DVC remote by content hash.

A pure core (no kfp imports) over DVC's own machinery: each call works in a throwaway DVC
repository (what ``dvc init --no-scm`` writes, in a temporary directory) whose only remote
is the one given, so the same code runs on a laptop (a local-directory remote) and in a cluster task
(an object store such as S3 with ``endpointurl``; credentials come from the environment,
as DVC and boto read them: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ...).

- :func:`remote_config` reads the repository's default remote on the host (``.dvc/config``
  and ``.dvc/config.local``) as a plain dict, without secrets, to pass to tasks.
- :func:`fetch` gets a file or a directory (DVC 3 ``.dir`` manifest) by the md5 in its
  pointer through the remote's DVC filesystem and object layout, verifies every byte
  against the pointer itself (DVC does not re-hash what it downloads from an object
  store, and on a local remote it drops a corrupted object and reports it "missing") and
  moves it into place atomically: on any error nothing is left at the destination.
- :func:`ensure_dataset` (the ingest task) fetches a dataset only when it is not already
  under the data root; :func:`read_pointer` reads a ``.dvc`` file's pointer.
- :func:`push` sends a directory (a model version) to the remote and returns its pointer
  (``md5`` of the ``.dir`` manifest, ``size``, ``nfiles``), the ``outs`` entry of a
  ``.dvc`` file.

    python -m components.dvc_remote push models/package       # prints the pointer
    python -m components.dvc_remote fetch data/auto-mpg.data.dvc data/auto-mpg.data
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from components.errors import SlipwayError

REMOTE_NAME = "slipway"  # the remote's name inside the throwaway repositories
# Remote options that must never travel in a task parameter (they would land in the
# compiled pipeline and the run's records): credentials come from the environment.
_SECRET_OPTION = re.compile(r"secret|password|token|access_key|passphrase", re.IGNORECASE)


_CORRUPTED_FIX = (
    "the copy in the DVC remote is corrupted: delete that object from the remote and "
    "`dvc push` the data again from a clone that has the right bytes (or correct the "
    "pointer if it names the wrong version)")


def _check_remote(remote: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(remote, dict) or not remote.get("url"):
        raise SlipwayError(
            f"DVC remote settings {remote!r} have no url",
            "configure a default remote (`dvc remote add -d NAME URL`) or pass "
            "{'name': ..., 'url': ...}",
        )
    secrets = sorted(k for k in remote if _SECRET_OPTION.search(str(k)))
    if secrets:
        raise SlipwayError(
            f"DVC remote settings carry credentials ({', '.join(secrets)}); they would be "
            "written into the pipeline and its records",
            "remove them and give credentials by environment (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, ...) or `dvc remote modify --local`",
        )
    return remote


def _describe(remote: dict[str, Any]) -> str:
    where = remote["url"]
    if remote.get("endpointurl"):
        where += f" at {remote['endpointurl']}"
    return f"DVC remote {remote.get('name') or REMOTE_NAME!r} ({where})"


def remote_config(root: str | Path = ".", name: str | None = None) -> dict[str, Any]:
    """The repository's default DVC remote (or ``name``) as a plain dict for tasks.

    Reads DVC's merged configuration (``.dvc/config`` then ``.dvc/config.local``), so a
    local-directory remote's url comes back absolute. Secrets (keys, passwords, tokens)
    are left out: a task reads them from its environment.

    Returns:
        ``{"name": ..., "url": ..., **options}``, e.g. ``endpointurl`` for S3.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            # the merged files as written (paths made absolute), without schema defaults
            config = repo.config.read()
            name = name or config["core"].get("remote")
            if not name:
                raise SlipwayError(
                    f"the DVC repository at {root} has no default remote",
                    "add one: `dvc remote add -d NAME URL` (make setup adds a local directory)",
                )
            if name not in config["remote"]:
                raise SlipwayError(
                    f"DVC remote {name!r} is not configured in {root}",
                    f"`dvc remote list` shows the remotes; add it with `dvc remote add {name} URL`",
                )
            section = dict(config["remote"][name])
    except DvcException as err:
        raise SlipwayError(f"cannot read the DVC configuration of {root}: {err}",
                           "run `dvc init` there, or run from the repository root") from None
    options = {str(k): v for k, v in section.items() if not _SECRET_OPTION.search(str(k))}
    return {"name": name, **options}


@contextlib.contextmanager
def _scratch_repo(remote: dict[str, Any], parent: Path) -> Iterator[Any]:
    """A throwaway DVC repository under ``parent`` whose default remote is ``remote``."""
    from dvc.config import Config
    from dvc.repo import Repo

    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=".dvc-remote-", dir=parent))
    try:
        # What `dvc init --no-scm` writes, written directly: Repo.init would first open
        # the repository with the default machine-wide state directory and leave an
        # entry there per throwaway repository.
        dvc_dir = root / ".dvc"
        dvc_dir.mkdir()
        (dvc_dir / "config").write_text("")
        options = {k: v for k, v in remote.items() if k != "name"}
        with Config(dvc_dir=str(dvc_dir)).edit("repo") as conf:
            conf["core"]["no_scm"] = True
            conf["core"]["analytics"] = False
            conf["core"]["remote"] = REMOTE_NAME
            conf["core"]["site_cache_dir"] = str(dvc_dir / "site")
            conf["remote"][REMOTE_NAME] = options
        with Repo(str(root)) as repo:
            yield repo
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _remote_odb(repo: Any, remote: dict[str, Any]) -> Any:
    """The remote's object database, after checking that the remote can be reached."""
    try:
        odb = repo.cloud.get_remote_odb(REMOTE_NAME)
        reachable = odb.fs.exists(odb.path)
    except Exception as err:  # noqa: BLE001 - any failure here means: cannot reach it
        raise SlipwayError(
            f"cannot reach the {_describe(remote)}: {type(err).__name__}: {err}",
            "check the url and endpointurl (`dvc remote list`, `dvc remote modify`), that "
            "the object store is up and that credentials are in the environment "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for S3)",
        ) from None
    return odb, reachable


def _md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - DVC's content hash, not security


def _file_md5(path: Path) -> str:
    from components.io import file_hash

    return file_hash(path, "md5")


def _check_pointer(pointer: dict[str, Any]) -> str:
    md5 = pointer.get("md5") if isinstance(pointer, dict) else None
    if not isinstance(md5, str) or not re.fullmatch(r"[0-9a-f]{32}(\.dir)?", md5):
        raise SlipwayError(
            f"DVC pointer {pointer!r} has no valid md5",
            "pass the `outs` entry of the .dvc file (or dvc.lock) that tracks the data",
        )
    return md5


def _missing_objects(odb: Any, md5: str, manifest: list[dict] | None) -> list[str]:
    """Names of the objects (relpaths for a directory) that the remote does not hold."""
    if not odb.exists(md5):
        return ["(the whole dataset: its top object " + md5 + ")"]
    if manifest is None:
        return []
    return [e["relpath"] for e in manifest if not odb.exists(e["md5"])]


def _read_manifest(odb: Any, md5: str) -> bytes | None:
    try:
        return odb.fs.cat_file(odb.oid_to_path(md5))
    except FileNotFoundError:
        return None


def _verify(path: Path, md5: str, manifest_bytes: bytes | None, name: str) -> None:
    """Check the downloaded bytes against the pointer; raise naming the first mismatch."""
    fix = _CORRUPTED_FIX
    if not md5.endswith(".dir"):
        got = _file_md5(path)
        if got != md5:
            raise SlipwayError(
                f"downloaded {name} has md5 {got}, but its DVC pointer says {md5}", fix)
        return
    got = _md5_bytes(manifest_bytes or b"")
    if got + ".dir" != md5:
        raise SlipwayError(
            f"downloaded directory manifest of {name} has md5 {got}.dir, but its DVC "
            f"pointer says {md5}", fix)
    entries = json.loads(manifest_bytes)
    expected = {e["relpath"]: e["md5"] for e in entries}
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    for relpath, want in sorted(expected.items()):
        if relpath not in present:
            raise SlipwayError(f"downloaded {name} lacks {relpath} (md5 {want})", fix)
        have = _file_md5(path / relpath)
        if have != want:
            raise SlipwayError(
                f"downloaded {name}/{relpath} has md5 {have}, but the manifest of {md5} "
                f"(the DVC pointer) says {want}", fix)
    extra = sorted(present - set(expected))
    if extra:
        raise SlipwayError(f"downloaded {name} has files its manifest lacks: {extra}", fix)


def fetch(pointer: dict[str, Any], remote: dict[str, Any], dest: str | Path) -> Path:
    """Get the file or directory that ``pointer`` names from the DVC remote into ``dest``.

    Args:
        pointer: an ``outs`` entry of a ``.dvc`` file or ``dvc.lock``: at least ``md5``
            (``...dir`` for a directory).
        remote: ``{"name", "url", ...options}`` as :func:`remote_config` gives.
        dest: where the file or directory goes. Its parent is created; an existing
            ``dest`` is replaced only once the new copy is verified.

    Raises:
        SlipwayError: the remote cannot be reached or is wrong, an object is missing in
            it, or the downloaded bytes differ from the pointer. ``dest`` is then left as
            it was (absent, or the old copy).
    """
    md5 = _check_pointer(pointer)
    remote = _check_remote(remote)
    dest = Path(dest)
    name = pointer.get("path") or dest.name
    with _scratch_repo(remote, dest.parent) as repo:
        odb, reachable = _remote_odb(repo, remote)
        if not reachable:
            raise SlipwayError(
                f"the {_describe(remote)} holds no DVC objects (a wrong url, or nothing "
                f"was ever pushed there): cannot get {name} (md5 {md5})",
                "check the remote's url (`dvc remote list`), or push the data from a clone "
                "that has it: `dvc push`",
            )
        manifest_bytes = _read_manifest(odb, md5) if md5.endswith(".dir") else None
        try:
            manifest = json.loads(manifest_bytes) if manifest_bytes is not None else None
        except ValueError:
            manifest = []  # a corrupted manifest: _verify names it
        missing = _missing_objects(odb, md5, manifest if md5.endswith(".dir") else None)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more"
                                                if len(missing) > 5 else "")
            raise SlipwayError(
                f"{name} (md5 {md5}) is not complete in the {_describe(remote)}: "
                f"missing {shown}",
                f"push it from a clone that has it: `dvc push {name}.dvc` (or `dvc push`)",
            )
        work = Path(repo.root_dir) / "out"
        try:
            if manifest is None:
                odb.fs.get_file(odb.oid_to_path(md5), str(work))
            else:
                work.mkdir()
                targets = [work / e["relpath"] for e in manifest]
                for target in targets:
                    target.parent.mkdir(parents=True, exist_ok=True)
                odb.fs.get([odb.oid_to_path(e["md5"]) for e in manifest],
                           [str(t) for t in targets], batch_size=odb.fs.jobs)
        except Exception as err:  # noqa: BLE001 - any transfer failure: name it, keep nothing
            raise SlipwayError(
                f"downloading {name} (md5 {md5}) from the {_describe(remote)} failed: "
                f"{type(err).__name__}: {err}",
                "check that the remote is reachable and complete (`dvc status -c`), then "
                "run again",
            ) from None
        _verify(work, md5, manifest_bytes, name)
        _move_into_place(work, dest)
    return dest


def _move_into_place(src: Path, dest: Path) -> None:
    """Rename ``src`` to ``dest`` (same filesystem: atomic for a file and a new directory)."""
    if src.is_dir():
        os.chmod(src, 0o755)
        for p in src.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    else:
        os.chmod(src, 0o644)
    if src.is_dir() and dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)


def push(path: str | Path, remote: dict[str, Any]) -> dict[str, Any]:
    """Send the file or directory at ``path`` to the DVC remote; return its pointer.

    Only the objects the remote lacks are uploaded (DVC's content addressing), so
    pushing the same model version twice costs one existence check per file.

    Returns:
        ``{"md5", "size", "nfiles", "hash": "md5", "path"}``: the ``outs`` entry a
        ``.dvc`` file would hold (``nfiles`` for a directory only).
    """
    from dvc.exceptions import DvcException

    remote = _check_remote(remote)
    path = Path(path).resolve()
    if not path.exists():
        raise SlipwayError(f"{path.name} to push does not exist",
                           "package the model version first")
    with _scratch_repo(remote, Path(tempfile.gettempdir())) as repo:
        odb, _ = _remote_odb(repo, remote)
        out = Path(repo.root_dir) / "out"
        try:
            repo.add(str(path), to_remote=True, out=str(out))
        except DvcException as err:
            raise SlipwayError(
                f"pushing {path.name} to the {_describe(remote)} failed: {err}",
                "check that the remote is reachable and writable, then run again",
            ) from None
        entry = yaml.safe_load((out.parent / "out.dvc").read_text())["outs"][0]
        if not odb.exists(entry["md5"]):
            raise SlipwayError(
                f"{path.name} (md5 {entry['md5']}) is not in the {_describe(remote)} after "
                "the push", "check the remote is writable, then run again")
    entry["path"] = path.name
    return {k: entry[k] for k in ("md5", "size", "nfiles", "hash", "path") if k in entry}


def read_pointer(data_path: str | Path, root: str | Path = ".") -> dict[str, Any] | None:
    """The ``outs`` entry of ``<data_path>.dvc`` under ``root``, or None without one."""
    dvc_file = Path(root) / f"{data_path}.dvc"
    if not dvc_file.is_file():
        return None
    try:
        entry = yaml.safe_load(dvc_file.read_text())["outs"][0]
    except (yaml.YAMLError, KeyError, IndexError, TypeError):
        raise SlipwayError(f"{dvc_file} is not a DVC pointer (no outs entry)",
                           f"restore it from git: `git checkout -- {dvc_file}`") from None
    return {k: entry[k] for k in ("md5", "size", "nfiles", "hash", "path") if k in entry}


def ensure_dataset(data_path: str | None, root: str | Path, pointer: dict[str, Any] | None,
                   remote: dict[str, Any] | None) -> bool:
    """Make the dataset at ``root/data_path`` present: fetch it by its pointer if absent.

    Returns:
        True when it was fetched (and verified against the pointer), False when it was
        already in place or the dataset has no file (a bundled set).

    Raises:
        SlipwayError: absent with no pointer or no remote to get it from, or the fetch
            failed (see :func:`fetch`).
    """
    if not data_path:
        return False
    target = Path(root) / data_path
    if target.exists():
        return False
    if not pointer:
        return False  # the stage itself says the data is missing, naming its path
    if not remote:
        raise SlipwayError(
            f"data {data_path} is not under {root} and no DVC remote was given to fetch it "
            f"(md5 {pointer.get('md5')})",
            "configure a default DVC remote (`dvc remote add -d NAME URL`) in the repository "
            "the pipeline is run or compiled from, or pass the dvc_remote parameter",
        )
    fetch({**pointer, "path": str(data_path)}, remote, target)
    return True


def pipeline_arguments(data_path: str | None, root: str | Path = ".",
                       portable: bool = False) -> dict[str, str]:
    """The DVC arguments of a pipeline run, as kfp parameters (JSON text, "" for none).

    ``dataset_pointer``: the outs entry of ``<data_path>.dvc``; ``dvc_remote``: the
    repository's default remote. ``portable=True`` (a compiled pipeline) keeps only a
    remote other machines can reach (a url with a scheme, such as ``s3://``): a local
    directory is this machine's.
    """
    root = Path(root)
    pointer = read_pointer(data_path, root) if data_path else None
    remote: dict[str, Any] | None = None
    if (root / ".dvc").is_dir():
        try:
            remote = remote_config(root)
        except SlipwayError:
            remote = None  # no default remote: data must be in place, versions stay local
    if remote and portable and "://" not in str(remote.get("url", "")):
        remote = None
    return {"dataset_pointer": json.dumps(pointer) if pointer else "",
            "dvc_remote": json.dumps(remote) if remote else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_push = sub.add_parser("push", help="push a file or directory; print its pointer (JSON)")
    p_push.add_argument("path", type=Path)
    p_fetch = sub.add_parser("fetch", help="fetch what a .dvc file points to into DEST")
    p_fetch.add_argument("pointer", type=Path, help="a .dvc file")
    p_fetch.add_argument("dest", type=Path)
    sub.add_parser("remote", help="print the default remote's settings (JSON)")
    args = parser.parse_args(argv)
    try:
        remote = remote_config()
        if args.command == "push":
            print(json.dumps(push(args.path, remote), indent=2))
        elif args.command == "fetch":
            pointer = yaml.safe_load(args.pointer.read_text())["outs"][0]
            fetch(pointer, remote, args.dest)
            print(f"fetched {args.dest} (md5 {pointer['md5']}, verified)")
        else:
            print(json.dumps(remote, indent=2))
    except SlipwayError as err:
        print(f"error: {err}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
