"""Data-parallel torch fits (components/trainers/distributed.py): real torchrun, gloo on CPU.

The slow tests start torchrun with 2 processes on the CPU, as CI's 2 cores allow: 2
processes give the model of 1 process with the same global batch (to float tolerance), and a
rank killed mid-fit ends the run with a clear error, after which a rerun resumes from rank
0's checkpoint. The others check the settings, the sharding and the error paths in-process.

    .venv/bin/python -m pytest tests/unit/test_trainer_torch_distributed.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn.datasets import load_digits  # noqa: E402

from components.config import DistributedParams, TrainParams, load_params  # noqa: E402
from components.errors import SlipwayError  # noqa: E402
from components.train import checkpoint_dir  # noqa: E402
from components.trainers import distributed, get_trainer  # noqa: E402
from components.trainers.torch import (  # noqa: E402
    CHECKPOINT_FILE,
    ShuffledBatches,
    TorchTrainer,
    World,
    checkpoint_epoch,
)

REPO = Path(__file__).resolve().parents[2]
# No dropout: its masks are drawn per process, so only a fit without it can be the same
# with 1 and 2 processes. An odd batch size: the two ranks' slices differ in size every step.
SAME_HP = {"channels": [4, 8], "hidden": [16, 16], "epochs": 3, "patience": 3,
           "batch_size": 33, "lr": 5e-3, "dropout": 0.0, "schedule": "plateau"}


def _digits(rows: int = 601):
    data = load_digits()
    x, y = (data.data / 16).astype(np.float32), data.target.astype(np.int64)
    return x[:rows], y[:rows], x[1500:], y[1500:]


def _assert_close_weights(a: TorchTrainer, b: TorchTrainer, atol: float = 2e-5) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k].float(), sb[k].float(), atol=atol, rtol=1e-4,
                                   msg=lambda m, k=k: f"{k}: {m}")


# ------------------------------------------------------------------ settings and sharding

@pytest.mark.parametrize("value,expected", [(1, 1), (2, 2), (2.0, 2), ("auto", "auto")])
def test_nproc_per_node_takes_whole_numbers_and_auto(value, expected):
    assert DistributedParams(nproc_per_node=value).nproc_per_node == expected


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_nproc_per_node_refuses_other_values(tmp_path, value):
    with pytest.raises(SlipwayError, match="train.distributed.nproc_per_node: nproc_per_node "
                                           "must be a whole number >= 1"):
        load_params(REPO / "params.yaml", [f"train.distributed.nproc_per_node={value!r}"])


def test_params_yaml_trains_in_one_process_by_default():
    rules = load_params(REPO / "params.yaml").train
    assert rules.distributed == DistributedParams()


def test_auto_is_one_process_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.world_size("auto") == 1
    assert distributed.world_size(3) == 3


def test_several_nodes_are_for_the_cluster():
    with pytest.raises(SlipwayError, match="several nodes run on a cluster only"):
        distributed.world_size(2, nnodes=2)


def test_nccl_needs_a_gpu():
    assert distributed.backend_for("auto", cuda=False) == "gloo"
    assert distributed.backend_for("auto", cuda=True) == "nccl"
    with pytest.raises(SlipwayError, match="NCCL runs on GPUs only"):
        distributed.backend_for("nccl", cuda=False)


def test_sklearn_cannot_be_distributed():
    trainer = get_trainer("sklearn", "classification", "knn", {}, 0)
    x, y, _, _ = _digits(50)
    with pytest.raises(SlipwayError, match="the sklearn backend trains in one process"):
        distributed.fit(trainer, x, y, None, None, DistributedParams(nproc_per_node=2))


def test_auto_fits_other_frameworks_in_this_process():
    trainer = get_trainer("sklearn", "classification", "knn", {}, 0)
    x, y, _, _ = _digits(50)
    assert distributed.fit(trainer, x, y, None, None,
                           DistributedParams(nproc_per_node="auto")) is trainer
    assert len(trainer.predict(x)) == 50


def test_one_process_fits_in_this_process():
    trainer = TorchTrainer("classification", "cnn", {**SAME_HP, "epochs": 1}, 0,
                           image_shape=(1, 8, 8))
    x, y, xv, yv = _digits(200)
    assert distributed.fit(trainer, x, y, xv, yv, DistributedParams()) is trainer
    assert trainer.model is not None


@pytest.mark.parametrize("rows,batch,world", [(601, 33, 2), (100, 7, 3), (5, 4, 4)])
def test_ranks_slice_the_same_permutation(rows, batch, world):
    """The ranks' slices of each step are the one-process batch, in rank order."""
    whole = list(ShuffledBatches(rows, batch, torch.Generator().manual_seed(3)))
    ranks = [list(ShuffledBatches(rows, batch, torch.Generator().manual_seed(3),
                                  World(r, world))) for r in range(world)]
    sampler = ShuffledBatches(rows, batch, torch.Generator(), World(0, world))
    for step, batch_rows in enumerate(whole):
        assert torch.equal(torch.cat([ranks[r][step] for r in range(world)]), batch_rows)
        assert sampler.global_rows(step) == len(batch_rows)
    assert all(len(r) == len(whole) for r in ranks)  # every rank steps alike


def test_checkpoint_folder_does_not_depend_on_the_process_count(tmp_path):
    table = tmp_path / "train.parquet"
    table.write_bytes(b"rows")
    one = TrainParams(framework="torch", estimator="mlp")
    two = TrainParams(framework="torch", estimator="mlp", distributed={"nproc_per_node": 2})
    assert checkpoint_dir(one, table) == checkpoint_dir(two, table)


# ---------------------------------------------------------------------------- torchrun

@pytest.mark.slow
def test_two_processes_give_the_model_of_one(tmp_path, capfd):
    x, y, xv, yv = _digits()
    one = TorchTrainer("classification", "cnn", SAME_HP, 5, image_shape=(1, 8, 8))
    one.fit(x, y, xv, yv)
    capfd.readouterr()
    two = distributed.fit(
        TorchTrainer("classification", "cnn", SAME_HP, 5, image_shape=(1, 8, 8),
                     checkpoint_dir=tmp_path / "ckpt"),
        x, y, xv, yv, DistributedParams(nproc_per_node=2))
    err = capfd.readouterr().err
    print(err)
    assert err.index("torch: distributed fit: world size 2") < err.index("epoch 1/")
    assert "world size 2 (gloo)" in err
    assert "x 2 processes (gloo)" in two.device
    assert two is not one and two.history.keys() == one.history.keys()
    for name in one.history:
        np.testing.assert_allclose(two.history[name], one.history[name], rtol=1e-4, atol=1e-6)
    _assert_close_weights(one, two)
    np.testing.assert_allclose(two.predict_proba(xv), one.predict_proba(xv), atol=1e-4)
    # Only rank 0 wrote the checkpoint: one file, and it holds rank 1's random state too.
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [CHECKPOINT_FILE]
    assert checkpoint_epoch(tmp_path / "ckpt" / CHECKPOINT_FILE) == SAME_HP["epochs"]


KILL_HP = {"hidden": [64, 32], "epochs": 12, "patience": 12, "batch_size": 8, "lr": 1e-3,
           "dropout": 0.0, "schedule": "cosine"}

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from sklearn.datasets import load_digits
    from components.config import DistributedParams
    from components.errors import SlipwayError
    from components.trainers import distributed
    from components.trainers.torch import TorchTrainer

    data = load_digits()
    x, y = (data.data / 16).astype(np.float32), data.target.astype(np.int64)
    trainer = TorchTrainer("classification", "mlp", {hp!r}, 7, checkpoint_dir=sys.argv[1])
    try:
        distributed.fit(trainer, x[:1200], y[:1200], x[1500:], y[1500:],
                        DistributedParams(nproc_per_node=2))
    except SlipwayError as err:
        print(err, file=sys.stderr)
        sys.exit(3)
""")


def _rank_pid(tag: str, rank: int) -> int | None:
    """The pid of torchrun's process ``rank`` among those started with SLIPWAY_TEST_TAG=tag."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(e.split("=", 1) for e in
                       (proc / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in e)
        except OSError:
            continue
        if env.get("SLIPWAY_TEST_TAG") == tag and env.get("RANK") == str(rank):
            return int(proc.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_killed_rank_ends_the_run_and_a_rerun_resumes(tmp_path, capfd):
    ckpt_dir = tmp_path / "ckpt"
    ckpt = ckpt_dir / CHECKPOINT_FILE
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(hp=KILL_HP))
    tag = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(REPO), "SLIPWAY_TEST_TAG": tag}
    child = subprocess.Popen([sys.executable, str(script), str(ckpt_dir)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = None
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if checkpoint_epoch(ckpt) >= 2:
                killed = _rank_pid(tag, 1)
                if killed:
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.05)
        _, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    stderr = stderr.decode()
    assert killed, stderr[-3000:]
    assert child.returncode == 3, stderr[-3000:]
    killed_at = checkpoint_epoch(ckpt)
    assert 2 <= killed_at < KILL_HP["epochs"], "the fit ended before the kill"
    assert "the distributed fit failed: torchrun exited with status" in stderr
    assert "one of its 2 processes was killed or crashed" in stderr
    assert f"it resumes from {ckpt} after epoch {killed_at}" in stderr

    data = load_digits()
    x, y = (data.data / 16).astype(np.float32), data.target.astype(np.int64)
    args = (x[:1200], y[:1200], x[1500:], y[1500:])
    capfd.readouterr()
    resumed = distributed.fit(
        TorchTrainer("classification", "mlp", KILL_HP, 7, checkpoint_dir=ckpt_dir),
        *args, DistributedParams(nproc_per_node=2))
    assert f"resuming from {ckpt} after epoch {killed_at}/" in capfd.readouterr().err
    whole = TorchTrainer("classification", "mlp", KILL_HP, 7)
    whole.fit(*args)
    assert len(resumed.history["loss"]) == KILL_HP["epochs"]
    np.testing.assert_allclose(resumed.history["val_loss"], whole.history["val_loss"],
                               rtol=1e-4)
    _assert_close_weights(resumed, whole, atol=1e-4)


@pytest.mark.slow
def test_a_rank_error_is_reported_as_the_rank_said_it(tmp_path):
    """A fit that diverges fails on every rank with the trainer's own message."""
    x, y, xv, yv = _digits(200)
    x = x * np.float32(1e38)  # the first layer overflows: the loss is not finite
    trainer = TorchTrainer("classification", "mlp", {**KILL_HP, "epochs": 1}, 0)
    with pytest.raises(SlipwayError, match=r"distributed fit, rank \d: the mlp diverged"):
        distributed.fit(trainer, x, y, xv, yv, DistributedParams(nproc_per_node=2))


def test_worker_files_are_plain_arrays_and_json(tmp_path, monkeypatch):
    """What the launcher hands the processes: no pickles (np.load with allow_pickle=False)."""
    seen = {}

    class FailedTorchrun:
        """Reads what it was given and exits with status 1, without starting anything."""

        def __init__(self, command, **kwargs):
            work = Path(command[-1])
            with np.load(work / "arrays.npz", allow_pickle=False) as data:
                seen["arrays"] = sorted(data.files)
            seen["spec"] = json.loads((work / "trainer.json").read_text())
            seen["command"] = command

        def wait(self, timeout=None):
            return 1

    monkeypatch.setattr(subprocess, "Popen", FailedTorchrun)
    x, y, _, _ = _digits(40)
    trainer = TorchTrainer("classification", "mlp", {"epochs": 1}, 0)
    with pytest.raises(SlipwayError, match="set train.checkpoint_dir so that a rerun resumes"):
        distributed.launch(trainer, x, y, None, None, 2)
    assert seen["arrays"] == ["x", "y"]
    assert seen["spec"]["backend"] == "gloo" and seen["spec"]["checkpoint_dir"] is None
    assert seen["command"][2:4] == ["torch.distributed.run", "--standalone"]


@pytest.mark.slow
def test_a_tuning_trial_fits_with_torchrun_too(built_classification, capfd):
    """score_trial (one trial of the tuning pipeline) takes train.distributed as the train
    core does: its fit on the whole training split runs as 2 processes."""
    from components.tune import score_trial

    train_path, val_path, _ = built_classification.processed
    base = TrainParams(framework="torch", estimator="mlp", cv_folds=2, seed=0,
                       distributed={"nproc_per_node": 2})
    trial = {"trial": 0, "framework": "torch", "estimator": "mlp",
             "hyperparameters": {"hidden": [8], "epochs": 2, "batch_size": 8}}
    scored = score_trial(train_path, val_path, base, trial)
    assert "torch: distributed fit: world size 2" in capfd.readouterr().err
    assert 0 <= scored["val_score"] <= 1 and scored["hyperparameters"]["epochs"] == 2
