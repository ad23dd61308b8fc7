"""Data-parallel fits of the torch backend on one node: torchrun, one process per GPU or CPU share.

``train.distributed.nproc_per_node`` > 1 (or ``auto`` on a machine with several GPUs) makes
:func:`fit` launch the fit with torchrun instead of running it in the caller's process::

    python -m torch.distributed.run --standalone --nproc_per_node N --max-restarts 0 \\
        -m components.trainers.distributed <scratch dir>

The caller's arrays travel to the processes as one ``.npz`` (read with ``allow_pickle=False``)
and the trainer's settings as JSON; every process builds the same trainer and runs
:meth:`TorchTrainer.fit <components.trainers.torch.TorchTrainer.fit>`, which sees the process
group and trains data-parallel (DistributedDataParallel: NCCL on GPUs, gloo on CPU). Each
process takes its slice of every batch of the same seeded permutation, so N processes with
``batch_size`` B step exactly as one process with B (the gradients are the same sums);
validation, early stopping and the learning-rate schedule use rank 0's numbers, broadcast, so
the ranks cannot disagree. Only rank 0 writes the checkpoint and the model. A killed or failed
process ends the run (``--max-restarts 0``) and :func:`fit` raises an error saying so and
from which epoch a rerun resumes.

Nothing here imports torch at module level: the train core imports this module for every
framework.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import SlipwayError

_ARRAYS = "arrays.npz"
_SPEC = "trainer.json"
_MODEL = "model"
_HISTORY = "history.json"
_ERROR = "error-rank{rank}.json"
_ARRAY_NAMES = ("x", "y", "x_val", "y_val")


def world_size(nproc_per_node: int | str, nnodes: int = 1) -> int:
    """Processes a fit runs as on this node: ``auto`` is one per visible GPU (1 on CPU).

    Raises:
        SlipwayError: more processes than GPUs on a GPU machine (NCCL needs a GPU each), or
            several nodes asked of a local run.
    """
    if nnodes > 1:
        raise SlipwayError(
            f"train.distributed.nnodes is {nnodes}: several nodes run on a cluster only, as a "
            "Kubeflow Trainer TrainJob (components/trainers/trainjob.py) from a pipeline "
            "compiled for it, not in a fit of this process",
            "set train.distributed.nnodes=1, or upload the pipeline compiled with "
            "train.distributed.nnodes > 1 (set it in params.yaml, or make upload SET=...) and "
            "run that: a pipeline compiled with nnodes=1 cannot be given more nodes when it "
            "runs",
        )
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if nproc_per_node == "auto":
        return max(1, gpus)
    if gpus and nproc_per_node > gpus:
        raise SlipwayError(
            f"train.distributed.nproc_per_node is {nproc_per_node} but this machine has "
            f"{gpus} GPU(s): NCCL needs one GPU per process",
            f"set train.distributed.nproc_per_node to at most {gpus} (or auto), or hide the "
            "GPUs (CUDA_VISIBLE_DEVICES=) to train on CPU processes",
        )
    return int(nproc_per_node)


def backend_for(backend: str, cuda: bool) -> str:
    """The process group's backend: ``auto`` is NCCL on GPUs, gloo on CPU."""
    if backend == "auto":
        return "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise SlipwayError("train.distributed.backend is nccl but no CUDA GPU is visible: "
                           "NCCL runs on GPUs only",
                           "set train.distributed.backend to auto or gloo")
    return backend


def fit(trainer: Any, x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None,
        y_val: np.ndarray | None, distributed: Any = None) -> Any:
    """Fit ``trainer`` in this process, or data-parallel with torchrun; returns the fitted
    trainer (a new object, reloaded from rank 0's files, after a distributed fit).

    Args:
        trainer: an unfitted trainer from :func:`components.trainers.get_trainer`.
        x, y, x_val, y_val: as :meth:`Trainer.fit` takes them.
        distributed: ``train.distributed`` (:class:`components.config.DistributedParams`);
            None or one process: an ordinary fit.

    Raises:
        SlipwayError: distributed settings for a framework other than torch, or the
            distributed fit failed (a process killed or crashed).
    """
    if distributed is None or (distributed.nproc_per_node == 1 and distributed.nnodes == 1):
        trainer.fit(x, y, x_val, y_val)
        return trainer
    if trainer.framework != "torch":
        if distributed.nproc_per_node == "auto" and distributed.nnodes == 1:
            trainer.fit(x, y, x_val, y_val)  # auto: as many as it can use, here one
            return trainer
        raise SlipwayError(
            f"train.distributed asks for {distributed.nproc_per_node} processes, but the "
            f"{trainer.framework} backend trains in one process",
            "use train.framework=torch, or set train.distributed.nproc_per_node=1",
        )
    nproc = world_size(distributed.nproc_per_node, distributed.nnodes)
    if nproc == 1:
        trainer.fit(x, y, x_val, y_val)
        return trainer
    return launch(trainer, x, y, x_val, y_val, nproc, distributed.backend)


def launch(trainer: Any, x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None,
           y_val: np.ndarray | None, nproc: int, backend: str = "auto",
           quiet: bool = False) -> Any:
    """Run the fit as ``nproc`` torchrun processes on this node; returns the fitted trainer.

    The processes' output goes to this process's stderr (file descriptor 2, whatever
    ``sys.stderr`` is now), or nowhere with ``quiet`` (benchmarks).

    Raises:
        SlipwayError: a process failed (its own error when it raised one; otherwise which
            process died and from which epoch a rerun resumes).
    """
    import torch

    from components.trainers.loop import say

    cuda = torch.cuda.is_available()
    backend = backend_for(backend, cuda)
    say(f"torch: distributed fit: world size {nproc} ({nproc} process{'es' * (nproc > 1)} "
        f"on this node, {backend}, torchrun)")
    with tempfile.TemporaryDirectory(prefix="slipway-ddp-") as scratch:
        work = Path(scratch)
        stage(work, trainer, x, y, x_val, y_val, backend)
        env = dict(os.environ)
        repo = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
        if not cuda and "OMP_NUM_THREADS" not in env:  # share the cores, don't oversubscribe
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0",
                   *worker_command(work)]
        out = subprocess.DEVNULL if quiet else 2
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=out)
        try:
            status = proc.wait()
        except BaseException:  # interrupted: SIGTERM, on which torchrun ends its workers
            proc.terminate()   # (SIGKILL would leave them running: they have own sessions)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        if status != 0:
            raise failure(work, f"torchrun exited with status {status}", nproc,
                          trainer.checkpoint_dir)
        return collect(work, trainer)


def worker_command(work: Path | str) -> list[str]:
    """What torchrun runs in each process (after its own options): this module's worker."""
    return ["-m", "components.trainers.distributed", str(work)]


def stage(work: Path, trainer: Any, x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None,
          y_val: np.ndarray | None, backend: str) -> None:
    """Write what every process needs into ``work`` (a folder all of them can read): the
    arrays (one .npz, no pickles) and the trainer's settings (JSON)."""
    work.mkdir(parents=True, exist_ok=True)
    arrays = {"x": x, "y": y}
    if x_val is not None and y_val is not None and len(x_val):
        arrays.update(x_val=x_val, y_val=y_val)
    np.savez(work / _ARRAYS, **arrays)
    (work / _SPEC).write_text(json.dumps({
        "task": trainer.task, "estimator": trainer.estimator,
        "hyperparameters": trainer.hyperparameters, "seed": trainer.seed,
        "image_shape": list(trainer.image_shape) if trainer.image_shape else None,
        "checkpoint_dir": str(trainer.checkpoint_dir) if trainer.checkpoint_dir else None,
        "backend": backend,
    }))


def collect(work: Path, trainer: Any) -> Any:
    """The trainer rank 0 saved in ``work``, reloaded (on CPU), with its history."""
    meta = json.loads((work / _MODEL / "trainer.json").read_text())
    fitted = type(trainer).load(work / _MODEL, meta, {})
    fitted.checkpoint_dir = trainer.checkpoint_dir
    fitted.history = json.loads((work / _HISTORY).read_text())
    return fitted


def failure(work: Path, how: str, nproc: int, checkpoint_dir: Path | None) -> SlipwayError:
    """The error for a failed distributed fit of ``nproc`` processes in all: a rank's own
    error when it wrote one, else that a process died, and from where a rerun resumes."""
    for rank in range(nproc):
        path = work / _ERROR.format(rank=rank)
        if path.is_file():
            err = json.loads(path.read_text())
            return SlipwayError(f"distributed fit, rank {rank}: {err['message']}", err["fix"])
    resume = "set train.checkpoint_dir so that a rerun resumes, and rerun"
    if checkpoint_dir is not None:
        from components.trainers.torch import CHECKPOINT_FILE, checkpoint_epoch

        ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE
        epoch = checkpoint_epoch(ckpt)
        resume = (f"rerun the train task: it resumes from {ckpt} after epoch {epoch}"
                  if epoch else "rerun the train task (no epoch had finished: it starts afresh)")
    return SlipwayError(
        f"the distributed fit failed: {how}: one of its {nproc} processes was killed or "
        "crashed (torchrun's report names the rank and its exit code or signal), and "
        "torchrun stopped the others",
        resume + "; if a process ran out of memory, lower "
        "train.distributed.nproc_per_node or the batch size",
    )


def _worker(work: Path) -> int:
    """One torchrun process: join the group, fit, and (rank 0) save the model."""
    import torch
    import torch.distributed as dist

    from components.trainers.torch import TorchTrainer

    spec = json.loads((work / _SPEC).read_text())
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if spec["backend"] == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(spec["backend"])
    try:
        with np.load(work / _ARRAYS, allow_pickle=False) as data:
            arrays = {k: (data[k] if k in data.files else None) for k in _ARRAY_NAMES}
        trainer = TorchTrainer(spec["task"], spec["estimator"], spec["hyperparameters"],
                               spec["seed"], image_shape=spec["image_shape"],
                               checkpoint_dir=spec["checkpoint_dir"])
        trainer.fit(arrays["x"], arrays["y"], arrays["x_val"], arrays["y_val"])
        if rank == 0:
            (work / _MODEL).mkdir()
            trainer.save(work / _MODEL)
            (work / _HISTORY).write_text(json.dumps(trainer.history))
    except SlipwayError as err:
        (work / _ERROR.format(rank=rank)).write_text(
            json.dumps({"message": err.message, "fix": err.fix}))
        print(f"rank {rank}: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker(Path(sys.argv[1])))
