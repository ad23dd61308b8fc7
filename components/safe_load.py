"""Loading fitted scikit-learn objects without executing code from the file.

Objects are stored with skops, which refuses to build any type not explicitly trusted.
:data:`TRUSTED_TYPES` lists the extra (non-default) types Slipway's own estimators need;
anything else in a file is refused with its name. When a hash is given, the file's bytes
are checked against it before skops parses anything.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path
from typing import Any

from components.errors import SlipwayError
from components.io import atomic_path, file_hash

_MEMBER = re.compile(r'"(\d+\.npy)"')
_OBJECT_ID = re.compile(r'"__id__": (\d+)')

# Reviewed: tree node storage (random forests, gradient boosting), loss and link objects of
# gradient boosting, SVC calibration wrappers and k-NN search trees.
# Loaded only from files whose sha256 matches the one recorded at packaging (serving) or
# that this run wrote itself (between stages).
TRUSTED_TYPES = (
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._gb_losses.BinomialDeviance",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss._loss.CyHalfMultinomialLoss",
    "sklearn._loss._loss.CyHalfSquaredError",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.metrics._dist_metrics.MinkowskiDistance64",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "numpy.dtype",
    "numpy.float64",
    "builtins.slice",
)


def dump(obj: Any, path: str | Path) -> None:
    """Write a fitted object with skops, atomically and reproducibly.

    skops names array members and object references after ``id()`` of the objects and
    stamps members with the current time; both are renumbered in order of first mention
    in skops' schema and members get a fixed timestamp, so the same fitted object always
    gives the same bytes (and so the same content hash, DVC hash and model version).
    """
    import skops.io as sio

    with zipfile.ZipFile(io.BytesIO(sio.dumps(obj))) as src:
        schema = src.read("schema.json").decode()
        renames: dict[str, str] = {}
        for member in _MEMBER.findall(schema):
            renames.setdefault(member, f"{len(renames)}.npy")
        schema = _MEMBER.sub(lambda m: f'"{renames[m.group(1)]}"', schema)
        ids: dict[str, str] = {}
        schema = _OBJECT_ID.sub(
            lambda m: f'"__id__": {ids.setdefault(m.group(1), str(len(ids) + 1))}', schema
        )
        members = {"schema.json": schema.encode()}
        for name in src.namelist():
            if name != "schema.json":
                members[renames.get(name, name)] = src.read(name)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in sorted(members):
            dst.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), members[name],
                         compress_type=zipfile.ZIP_DEFLATED)


def _refuse_mismatch(path: Path, sha256: str | None, actual: str) -> None:
    if sha256 is not None and actual != sha256:
        raise SlipwayError(
            f"{path} does not match its recorded sha256 (expected {sha256[:12]}…, "
            f"found {actual[:12]}…): the file was changed or truncated",
            "restore the model version (dvc checkout / dvc pull) or package it again",
        )


def verify_file(path: str | Path, sha256: str | None) -> None:
    """Refuse a missing model file, or one whose bytes differ from the recorded sha256.

    For frameworks that can only open a path (Keras); where the parser takes bytes, use
    :func:`read_verified`, which parses what it hashed.
    """
    path = Path(path)
    if not path.is_file():
        raise SlipwayError(f"model file {path} not found", "rerun the stage that writes it")
    if sha256 is not None:
        _refuse_mismatch(path, sha256, file_hash(path, "sha256"))


def read_verified(path: str | Path, sha256: str | None) -> bytes:
    """A model file's bytes, refused when missing or when they differ from the recorded
    sha256. The caller parses these very bytes, so a file swapped after the check is never
    read."""
    path = Path(path)
    if not path.is_file():
        raise SlipwayError(f"model file {path} not found", "rerun the stage that writes it")
    data = path.read_bytes()
    _refuse_mismatch(path, sha256, hashlib.sha256(data).hexdigest())
    return data


def load(path: str | Path, sha256: str | None = None) -> Any:
    """Load a skops file, refusing unreviewed types and (optionally) a wrong hash.

    Args:
        path: the ``.skops`` file.
        sha256: expected hex digest of the file; checked on the bytes then parsed.

    Raises:
        SlipwayError: the file is missing, its hash differs, or it holds an untrusted type.
    """
    import skops.io as sio

    path = Path(path)
    data = read_verified(path, sha256)
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as err:  # skops raises zipfile/json errors on garbled files
        raise SlipwayError(f"{path} is not a readable skops file: {err}",
                           "restore or regenerate the file") from None
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise SlipwayError(
            f"{path} holds types that are not on Slipway's trusted list: {', '.join(refused)}",
            "review the types and add them to components/safe_load.py TRUSTED_TYPES",
        )
    return sio.loads(data, trusted=list(untrusted))
