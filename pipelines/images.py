"""The component images: build them offline with podman, and say which one a task runs.

One image per *role* (the contract with the stage graph, ``components/stages.py``):

- ``stages``: the CPU stages (pandas, scikit-learn, pyarrow, skops, kfp, dvc[s3], bentoml for
  the model store); no torch, no TensorFlow. ``components/images/Containerfile``.
- ``torch``: the stages' packages plus the torch trainer (CPU wheel; ``TORCH_CUDA=cu128``
  builds the CUDA one). Same Containerfile, ``EXTRA=torch``.
- ``keras``: the stages' packages plus TensorFlow and Keras. Same Containerfile, ``EXTRA=keras``.
- ``serving``: the BentoML service. ``serving/Containerfile``.

No registry can be reached, so nothing is pulled: the base is a Debian bookworm ``minbase``
rootfs made with ``debootstrap`` (python3 3.11, the host's CA bundle) and ``podman import``-ed;
pip installs offline from a wheelhouse made here with this machine's pip configuration (which
holds the CPU torch wheel), mounted read-only into the build, pinned by ``requirements.lock``.
Each image is tagged ``localhost/slipway-<role>:<commit>``; ``build/images.json`` records, per
role, its digest reference, digest, size, commit and the hash of the code baked in.

    python -m pipelines.images build [--roles stages torch]   # make images
    python -m pipelines.images show                           # what is built
    python -m pipelines.images model --model name:version     # serving image + one model

A *model image* (:func:`build_model_image`) is the serving image with one registered model
version copied into its BentoML store and named in ``SLIPWAY_MODEL``: what the Helm chart
``charts/slipway-serving`` runs (the model ships in the image; nothing is fetched at start).

:func:`image_ref` is what the pipeline wiring gives each task; :func:`require_built` is the
containers runner's check that an image exists and holds the current code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from components.errors import SlipwayError, did_you_mean

ROOT = Path(__file__).resolve().parents[1]
IMAGES_FILE = Path("build") / "images.json"
BUILD_DIR = Path("build") / "images"
NAME = "localhost/slipway-{role}"
SUITE = "bookworm"
# Debian packages of the base, on top of minbase. python3-venv gives the venv its pip.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MAKE_IMAGES = "run `make images` (or python -m pipelines.images build --roles {role})"


@dataclass(frozen=True)
class Role:
    """How one role's image is built: its Containerfile, build context and packages."""

    containerfile: str  # relative to the repository root
    requirements: tuple[str, ...]  # requirement files copied into the context
    code: tuple[str, ...]  # packages of this repository baked into the image
    extra: str = ""  # the EXTRA build argument (components/images/<extra>.txt)


ROLES: dict[str, Role] = {
    "stages": Role("components/images/Containerfile",
                   ("components/images/stages.txt", "components/images/none.txt"),
                   ("components",), "none"),
    "torch": Role("components/images/Containerfile",
                  ("components/images/stages.txt", "components/images/torch.txt"),
                  ("components",), "torch"),
    "keras": Role("components/images/Containerfile",
                  ("components/images/stages.txt", "components/images/keras.txt"),
                  ("components",), "keras"),
    "serving": Role("serving/Containerfile", ("serving/requirements.txt",),
                    ("components", "serving")),
}


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise SlipwayError(f"unknown image role {role!r}", did_you_mean(role, ROLES))
    return ROLES[role]


def git_commit(root: Path = ROOT, short: bool = True) -> str:
    """The commit of the work tree (``unknown`` outside git)."""
    args = ["git", "rev-parse", *(["--short=12"] if short else []), "HEAD"]
    try:
        out = subprocess.run(args, cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _code_files(root: Path, role: Role) -> list[Path]:
    """The files baked into a role's image, relative to ``root``, in a stable order."""
    files = [Path(p) for p in role.requirements] + [Path("requirements.lock")]
    for package in role.code:
        for path in sorted((root / package).rglob("*")):
            rel = path.relative_to(root)
            if (path.is_file() and "__pycache__" not in rel.parts
                    and rel.parts[:2] != ("components", "images")):
                files.append(rel)
    return files


def code_hash(role: str, root: Path = ROOT) -> str:
    """sha256 over the names and bytes of the files a role's image is built from (its
    Containerfile, requirement files, requirements.lock and code)."""
    spec = _check_role(role)
    digest = hashlib.sha256()
    for rel in [Path(spec.containerfile), *_code_files(root, spec)]:
        digest.update(f"{rel}\0".encode())
        digest.update((root / rel).read_bytes())
    return digest.hexdigest()


def built(root: Path = ROOT) -> dict[str, dict]:
    """``build/images.json``: role -> {ref, digest, size, tag, commit, code}; {} if none."""
    path = root / IMAGES_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise SlipwayError(f"{path} is not valid JSON ({err})", f"delete it and {MAKE_IMAGES}"
                           .format(role="...")) from err


def image_ref(role: str, root: Path = ROOT) -> str:
    """The image a task of this role runs: ``localhost/slipway-<role>@sha256:...`` from
    ``build/images.json`` when the image was built, else the tag ``slipway-<role>:<commit>``
    (what a registry would hold for this commit)."""
    _check_role(role)
    entry = built(root).get(role)
    if entry and entry.get("ref"):
        return entry["ref"]
    return f"slipway-{role}:{git_commit(root)}"


def require_built(roles: list[str] | tuple[str, ...], root: Path = ROOT,
                  present: set[str] | None = None) -> dict[str, str]:
    """The digest reference of each role's image, or a clear error when one cannot be used.

    An image must be in ``build/images.json``, in podman's store (``present``: the image
    ids/digests podman has; looked up when None) and built from the code of this work tree,
    otherwise a containerized run would run other code than the one checked out.

    Raises:
        SlipwayError: "image for role X not built: run `make images`" (or out of date).
    """
    entries = built(root)
    refs = {}
    for role in roles:
        _check_role(role)
        fix = MAKE_IMAGES.format(role=role)
        entry = entries.get(role)
        if not entry:
            raise SlipwayError(f"image for role {role!r} not built ({root / IMAGES_FILE} "
                               "has no entry for it)", fix)
        if present is None:
            present = podman_digests()
        if entry["digest"] not in present:
            raise SlipwayError(f"image for role {role!r} not built: {entry['ref']} is not in "
                               "podman's image store", fix)
        if entry.get("code") != code_hash(role, root):
            raise SlipwayError(f"image for role {role!r} is out of date: it was built from "
                               "other code than this work tree's", fix)
        refs[role] = entry["ref"]
    return refs


def podman_digests() -> set[str]:
    """The digests of the images in podman's store (empty without podman)."""
    if shutil.which("podman") is None:
        return set()
    out = subprocess.run(["podman", "images", "--no-trunc", "--format", "{{.Digest}}"],
                         capture_output=True, text=True, env=podman_env())
    return set(out.stdout.split()) if out.returncode == 0 else set()


# ---- podman's settings ------------------------------------------------------------------

# What makes podman run here (PLATFORM-NOTES): runc, not the default runtime, and ulimits it
# can set; without them a container fails with "setrlimit RLIMIT_NOFILE" or a cgroups error.
CONTAINERS_CONF = """\
# Written by pipelines/images.py for Slipway's podman calls (CONTAINERS_CONF).
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=20000:20000", "nproc=16384:16384"]
"""


def podman_env(root: Path = ROOT) -> dict[str, str]:
    """The environment for a podman call: ``CONTAINERS_CONF`` pointing at Slipway's file
    under build/ (written when missing or different), unless the caller set one."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env:
        conf = root / "build" / "containers.conf"
        if not conf.is_file() or conf.read_text() != CONTAINERS_CONF:
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(CONTAINERS_CONF)
        env["CONTAINERS_CONF"] = str(conf)
    return env


# ---- building -------------------------------------------------------------------------

def _podman(*args: str, capture: bool = False, **kw) -> subprocess.CompletedProcess:
    if shutil.which("podman") is None:
        raise SlipwayError(
            "podman is not installed: the images are built with podman",
            "apt-get install podman buildah runc uidmap slirp4netns debootstrap")
    return subprocess.run(["podman", *args], check=True, text=True, env=podman_env(),
                          capture_output=capture, **kw)


def _run(cmd: list[str], what: str, log: Path) -> None:
    """Run a build step, its output to ``log``; its tail in the error if it fails."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=podman_env())
    if done.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SlipwayError(f"{what} failed (exit {done.returncode}):\n{tail}",
                           f"see the whole log in {log}")


def base_image(root: Path = ROOT, log: Path | None = None) -> str:
    """The Debian base image, built with debootstrap and imported once per recipe."""
    ca = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.is_file() else b""
    recipe = f"{SUITE} minbase {','.join(BASE_PACKAGES)}\n".encode() + ca
    ref = f"{NAME.format(role='base')}:{hashlib.sha256(recipe).hexdigest()[:12]}"
    if subprocess.run(["podman", "image", "exists", ref], env=podman_env()).returncode == 0:
        return ref
    if shutil.which("debootstrap") is None:
        raise SlipwayError("debootstrap is not installed: the base image is made with it",
                           "apt-get install debootstrap")
    build = root / BUILD_DIR
    rootfs = build / "rootfs"
    log = log or build / "build.log"
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.mkdir(parents=True)
    mirror = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
    print(f"==> base: debootstrap {SUITE} minbase + {', '.join(BASE_PACKAGES)}", flush=True)
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
          SUITE, str(rootfs), mirror], "debootstrap", log)
    if ca:  # the host's bundle: TLS from inside works wherever it works here
        (rootfs / "etc/ssl/certs/ca-certificates.crt").write_bytes(ca)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                 "usr/share/man", "usr/share/info", "usr/share/locale", "var/log"):
        shutil.rmtree(rootfs / junk, ignore_errors=True)
        (rootfs / junk).mkdir(parents=True, exist_ok=True)
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                           stdout=subprocess.PIPE)
    _podman("import", "--change", "CMD [\"/bin/bash\"]", "-", ref, stdin=tar.stdout,
            stdout=subprocess.DEVNULL)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    return ref


def wheelhouse(roles: list[str], root: Path = ROOT, log: Path | None = None) -> Path:
    """A folder of wheels for the roles' requirement files, made with this machine's pip
    (its configuration names the CPU torch wheel), pinned by requirements.lock."""
    files = sorted({f for r in roles for f in ROLES[r].requirements})
    house = root / BUILD_DIR / "wheels"
    key = hashlib.sha256(b"".join((root / f).read_bytes() for f in [*files, "requirements.lock"]))
    stamp = house / f".done-{key.hexdigest()[:16]}"
    if stamp.exists():
        return house
    house.mkdir(parents=True, exist_ok=True)
    print(f"==> wheelhouse for {', '.join(roles)} (pip wheel, pinned by requirements.lock)",
          flush=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(house),
           "-c", str(root / "requirements.lock")]
    for f in files:
        cmd += ["-r", str(root / f)]
    _run(cmd, "pip wheel", log or root / BUILD_DIR / "build.log")
    stamp.touch()
    return house


def _context(role: str, root: Path, torch_cuda: str = "") -> Path:
    """A build context holding only what the Containerfile copies (never .venv or data),
    and the Containerfile itself with the commit appended as literal lines.

    Values that must change the image are files or literal instructions here, never
    ``--build-arg`` values: podman 4.3's layer cache does not look at those, so a new commit
    (or a CUDA build after a CPU one) would get the layers built for the old value.
    """
    spec = ROLES[role]
    ctx = root / BUILD_DIR / "context" / role
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    for rel in _code_files(root, spec):
        # requirement files sit at the top of the context, the code under its package
        dest = ctx / (rel.name if rel in map(Path, spec.requirements) else rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest)
    (ctx / "torch-variant").write_text(f"{torch_cuda or 'cpu'}\n")
    commit = git_commit(root, short=False)
    (ctx / "Containerfile").write_text(
        (root / spec.containerfile).read_text()
        + f"ENV SLIPWAY_GIT_COMMIT={commit}\n"
        + f"LABEL org.opencontainers.image.revision={commit}\n")
    return ctx


def build_role(role: str, base: str, wheels: Path, root: Path = ROOT,
               torch_cuda: str = "", log: Path | None = None) -> dict:
    """Build one role's image; returns its images.json entry."""
    spec = _check_role(role)
    log = log or root / BUILD_DIR / f"{role}.log"
    commit = git_commit(root)
    tag = f"{NAME.format(role=role)}:{commit}"
    ctx = _context(role, root, torch_cuda)
    # BASE and EXTRA are safe as build arguments: the base's tag is its recipe's hash, and
    # EXTRA names the file that the next COPY reads.
    cmd = ["podman", "build", "--layers", "-f", str(ctx / "Containerfile"), "-t", tag,
           "--build-arg", f"BASE={base}", "--volume", f"{wheels}:/wheels:ro"]
    if spec.extra:
        cmd += ["--build-arg", f"EXTRA={spec.extra}"]
    cmd.append(str(ctx))
    started = time.perf_counter()
    _run(cmd, f"podman build of the {role} image", log)
    seconds = time.perf_counter() - started
    info = json.loads(_podman("image", "inspect", tag, capture=True).stdout)[0]
    digest = info["Digest"]
    return {"ref": f"{NAME.format(role=role)}@{digest}", "tag": tag, "digest": digest,
            "size": info["Size"], "commit": commit, "code": code_hash(role, root),
            "build_seconds": round(seconds, 1)}


def build(roles: list[str] | None = None, root: Path = ROOT, torch_cuda: str = "") -> dict:
    """Build the roles' images (all by default) and record them in build/images.json."""
    roles = list(roles or ROLES)
    for role in roles:
        _check_role(role)
    if shutil.which("podman") is None:
        _podman("--version")  # raises the install message
    (root / BUILD_DIR).mkdir(parents=True, exist_ok=True)
    log = root / BUILD_DIR / "build.log"
    started = time.perf_counter()
    base = base_image(root, log)
    wheels = wheelhouse(roles, root, log)
    print(f"    base and wheels ready ({time.perf_counter() - started:.0f} s)", flush=True)
    entries = built(root)
    for role in roles:
        print(f"==> {role}: podman build (log: {root / BUILD_DIR / f'{role}.log'})", flush=True)
        entries[role] = entry = build_role(role, base, wheels, root, torch_cuda)
        print(f"    {entry['tag']}  {entry['digest'][:19]}  {entry['size'] / 1e6:.0f} MB  "
              f"({entry['build_seconds']:.0f} s)", flush=True)
        # written after each image, so a failure later keeps what was built
        (root / IMAGES_FILE).write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return entries


# ---- model images ----------------------------------------------------------------------

# Where the serving image keeps BentoML's home (serving/Containerfile: ENV BENTOML_HOME).
SERVING_BENTOML_HOME = "/opt/slipway/bentoml"
MODEL_IMAGE = "localhost/slipway-serving-{name}"


def build_model_image(model: str, serving_ref: str | None = None, root: Path = ROOT) -> dict:
    """Build the serving image with ``model`` (``name:version``, or ``name``: its latest
    version) copied from this machine's BentoML store (``BENTOML_HOME``) into the image's
    store, read-only and owned by root, and ``SLIPWAY_MODEL`` set to its full tag.

    Tagged ``localhost/slipway-serving-<name>:<version>``; returns ref (by digest), tag,
    digest, model tag and build seconds. The serving image must be built and current.
    """
    import bentoml  # heavy: only when a model image is asked for

    try:
        stored = bentoml.models.get(model)
    except bentoml.exceptions.NotFound:
        raise SlipwayError(f"model {model!r} is not in the BentoML store",
                           "run the training pipeline first, or check BENTOML_HOME and "
                           "`bentoml models list`") from None
    name, version = stored.tag.name, stored.tag.version
    serving_ref = serving_ref or require_built(["serving"], root)["serving"]
    ctx = root / BUILD_DIR / "context" / f"model-{name}-{version}"
    shutil.rmtree(ctx, ignore_errors=True)
    dest = ctx / "models" / name / version
    shutil.copytree(stored.path, dest)
    (ctx / "models" / name / "latest").write_text(version)
    for path in [ctx, *ctx.rglob("*")]:  # readable by the non-root user whatever the umask
        path.chmod(0o755 if path.is_dir() else 0o644)
    (ctx / "Containerfile").write_text(
        f"FROM {serving_ref}\n"
        f"COPY models {SERVING_BENTOML_HOME}/models\n"
        f"ENV SLIPWAY_MODEL={name}:{version}\n"
        f"LABEL ai.slipway.model={name}:{version}\n")
    tag = f"{MODEL_IMAGE.format(name=name)}:{version}"
    log = root / BUILD_DIR / "model.log"
    started = time.perf_counter()
    _run(["podman", "build", "--layers", "-f", str(ctx / "Containerfile"), "-t", tag,
          str(ctx)], f"podman build of the model image {tag}", log)
    seconds = time.perf_counter() - started
    digest = json.loads(_podman("image", "inspect", tag, capture=True).stdout)[0]["Digest"]
    return {"ref": f"{MODEL_IMAGE.format(name=name)}@{digest}", "tag": tag, "digest": digest,
            "model": f"{name}:{version}", "build_seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the images (all roles by default)")
    b.add_argument("--roles", nargs="+", default=None, metavar="ROLE",
                   help=f"roles to build: {', '.join(ROLES)}")
    b.add_argument("--torch-cuda", default="", metavar="TAG",
                   help="CUDA build of torch for the torch image, e.g. cu128 (needs network)")
    sub.add_parser("show", help="print build/images.json")
    m = sub.add_parser("model", help="build a model image: the serving image plus one model")
    m.add_argument("--model", required=True, metavar="NAME[:VERSION]",
                   help="a model in the BentoML store (BENTOML_HOME); a bare name: its latest")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.roles, torch_cuda=args.torch_cuda)
        elif args.command == "model":
            print(json.dumps(build_model_image(args.model), indent=2))
        else:
            print(json.dumps(built(), indent=2, sort_keys=True))
    except SlipwayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
