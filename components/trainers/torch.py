"""PyTorch backend: an ``mlp`` for tabular rows and a small ``cnn`` for images.

The training loop picks CUDA when present (else CPU) and says so once on stderr, with how
it will use the device (:class:`DevicePlan`). On CUDA it runs the forward pass under bf16
autocast (fp16 with loss scaling on cards without native bf16), keeps CNN weights and
batches channels-last, and feeds batches from pinned memory through loader workers; the
``precision`` and ``channels_last`` settings choose otherwise, and ask for bf16 autocast or
channels-last on CPU as well. On CPU it is seeded and deterministic, so the same fit gives
byte-identical ``model.safetensors``. Validation loss drives early stopping (the best
epoch's weights are kept) and the learning-rate schedule. After every epoch the whole
training state goes to ``checkpoint_dir/checkpoint.safetensors`` (safetensors for tensors,
JSON in its header for the rest, replaced atomically), and :meth:`TorchTrainer.fit`
resumes from it: a killed fit rerun on CPU ends with the same weights as one never
interrupted.

Inside a torchrun process group (:mod:`components.trainers.distributed` launches it) the fit
is data-parallel: the model is wrapped in DistributedDataParallel, each rank takes its slice
of every batch of the same seeded permutation and scales its loss so that the summed
gradients are those of the whole batch (N processes step as one process with the same
``batch_size``), validation numbers are rank 0's, broadcast (early stopping and the
learning-rate schedule agree), and only rank 0 says the progress and writes the checkpoint.

Set ``CUDA_VISIBLE_DEVICES=`` (empty) to train on CPU on a GPU machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from components import safe_load
from components.errors import SlipwayError
from components.io import atomic_path, write_json
from components.trainers.base import META_FILE, Trainer
from components.trainers.loop import (
    NetSettings,
    NetTrainer,
    announce,
    check_image_shape,
    epoch_line,
    metric_name,
    mixed_precision,
    n_outputs,
    say,
    target_scale,
)
from components.trainers.nets import build_net

MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
EVAL_BATCH = 1024  # rows per forward pass when evaluating and predicting (no gradients kept)


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun process group (rank 0 of 1 outside one)."""

    rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the process that reports, checkpoints and saves."""
        return self.rank == 0


def current_world() -> World:
    """The process group this fit runs in, if any."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def pick_device() -> tuple[torch.device, str]:
    """The device to train on (CUDA when present, else CPU) and how to name it."""
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        return torch.device("cuda", index), f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return torch.device("cpu"), "cpu"


@dataclass(frozen=True)
class DevicePlan:
    """How a fit uses its device: everything the training loop does differently on a GPU."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast's dtype; None: float32 throughout
    channels_last: bool            # CNN weights and image batches in NHWC memory order
    workers: int                   # DataLoader worker processes

    @property
    def pin_memory(self) -> bool:
        """Batches in page-locked memory: on CUDA, so host-to-device copies run async."""
        return self.device.type == "cuda"

    @property
    def loss_scaling(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has float32's range."""
        return self.amp_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context a forward pass runs in: autocast to ``amp_dtype``, or nothing."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        """``bf16 autocast, channels-last, pinned memory, 2 loader workers``."""
        parts = [{None: "fp32", torch.bfloat16: "bf16 autocast",
                  torch.float16: "fp16 autocast with loss scaling"}[self.amp_dtype]]
        if self.channels_last:
            parts.append("channels-last")
        if self.pin_memory:
            parts.append("pinned memory")
        if self.workers:
            parts.append(f"{self.workers} loader worker{'s' * (self.workers > 1)}")
        return ", ".join(parts)


def device_plan(device: torch.device, estimator: str, settings: NetSettings,
                native_bf16: bool) -> tuple[DevicePlan, list[str]]:
    """What a fit on ``device`` does, from the ``precision``, ``channels_last`` and
    ``num_workers`` settings, and warnings for what it cannot do as asked.

    Args:
        device: where the model trains.
        estimator: ``mlp`` or ``cnn`` (only a cnn has images to keep channels-last).
        settings: the validated hyperparameters.
        native_bf16: whether the GPU computes in bf16 natively (Ampere and newer).
    """
    cuda = device.type == "cuda"
    kind, warnings = mixed_precision(settings.precision, cuda, native_bf16)
    amp = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[kind]
    channels_last = settings.channels_last
    if channels_last is None:
        channels_last = estimator == "cnn" and cuda
    # Workers only pay on CUDA, where they slice the next batches (and the loader's pin
    # thread pins them) while the GPU computes. On CPU the data are already in-memory
    # tensors: slicing a batch costs microseconds, and workers would add process start-up
    # and inter-process copies while competing with the training step for the same cores.
    workers = settings.num_workers
    workers = (2 if cuda else 0) if workers is None else workers
    return DevicePlan(device, amp, channels_last, workers), warnings


def cpu_quota() -> int | None:
    """Whole CPUs the container may use (its cgroup CPU quota), or None when unlimited.

    torch sizes its thread pool by the cores it sees, not by a pod's CPU limit: 64 threads
    under a 2-CPU limit spend most of their time throttled.
    """
    candidates = (("/sys/fs/cgroup/cpu.max", None),  # cgroup v2: "<quota> <period>"
                  ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
    for quota_file, period_file in candidates:
        try:
            fields = Path(quota_file).read_text().split()
            if period_file:
                fields.append(Path(period_file).read_text().strip())
        except OSError:
            continue
        if fields[0] in ("max", "-1"):
            return None
        return max(1, math.ceil(int(fields[0]) / int(fields[1])))
    return None


def fit_threads() -> int:
    """CPU threads a fit uses: torch's own count, capped by the CPU quota unless
    OMP_NUM_THREADS chose it."""
    threads, quota = torch.get_num_threads(), cpu_quota()
    if quota is not None and quota < threads and "OMP_NUM_THREADS" not in os.environ:
        return quota
    return threads


@contextlib.contextmanager
def _fit_mode(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU (reproducible fits), autotuned cuDNN on CUDA, no more
    threads than the CPU quota (unless OMP_NUM_THREADS says otherwise); the process-wide
    switches are put back afterwards."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    threads = torch.get_num_threads()
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest conv
        torch.set_num_threads(fit_threads())
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.set_num_threads(threads)


class ShuffledBatches(torch.utils.data.Sampler):
    """One shuffled epoch as index tensors, a batch each: the dataset slices a whole batch
    with one indexing op, where a BatchSampler hands over lists of Python ints to collate.

    Args:
        rows: dataset size.
        batch_size: rows per batch (the last batch may be smaller); with several ranks the
            global batch, of which this rank takes its contiguous slice.
        generator: the seeded source of the shuffle (its state is checkpointed); seeded
            alike on every rank, so all ranks slice the same permutation.
        world: the process group (one process: whole batches).
    """

    def __init__(self, rows: int, batch_size: int, generator: torch.Generator,
                 world: World = World()) -> None:
        self.rows, self.batch_size, self.generator = rows, batch_size, generator
        self.world = world

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        # A generator: the permutation is drawn on the first batch asked for, not when the
        # iterator is made (a multi-worker loader makes two for its first epoch, uses one).
        batches = torch.randperm(self.rows, generator=self.generator).split(self.batch_size)
        if not self.world.distributed:
            yield from batches
            return
        for batch in batches:
            yield batch.tensor_split(self.world.size)[self.world.rank]

    def global_rows(self, step: int) -> int:
        """Rows of the whole batch ``step`` (0-based) across all ranks."""
        return min(self.batch_size, self.rows - step * self.batch_size)


def _as_is(batch: Any) -> Any:
    """The loader's collate step: a batch sliced from tensors needs no collating."""
    return batch


@dataclass
class _Progress:
    """Where a fit stands after ``epoch`` epochs (what a checkpoint restores)."""

    epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    history: dict[str, list[float]] = field(default_factory=dict)


class TorchTrainer(NetTrainer):
    """``mlp`` and ``cnn`` in PyTorch; hyperparameters: see :mod:`components.trainers.loop`."""

    framework = "torch"

    def __init__(
        self, task: str, estimator: str, hyperparameters: dict[str, Any], seed: int,
        **options: Any,
    ) -> None:
        super().__init__(task, estimator, hyperparameters, seed, **options)
        self.config: dict[str, Any] | None = None  # architecture, known once fit sees data
        self.model: torch.nn.Module | None = None
        # Where self.model sits and how it computes there (fit chooses; loaded models: CPU).
        self._plan = DevicePlan(torch.device("cpu"), None, False, 0)
        self._world = World()

    # ----------------------------------------------------------------- building blocks

    def _architecture(self, n_features: int, outputs: int) -> dict[str, Any]:
        return {
            "task": self.task,
            "estimator": self.estimator,
            "n_features": n_features,
            "n_outputs": outputs,
            "hidden": list(self.settings.hidden),
            "channels": list(self.settings.channels) if self.settings.channels else None,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "dropout": self.settings.dropout,
        }

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        """Float32 feature rows as a tensor; image batches as (N, C, H, W)."""
        x = _writable(np.ascontiguousarray(x, dtype=np.float32))
        n_features = self.config["n_features"]
        if x.ndim != 2 or x.shape[1] != n_features:
            raise SlipwayError(
                f"expected rows of {n_features} features, got an array of shape {x.shape}",
                "preprocess the data with the transformer the model was trained with",
            )
        t = torch.from_numpy(x)
        return t.view(len(t), *self.image_shape) if self.estimator == "cnn" else t

    @property
    def _device(self) -> torch.device:
        return self._plan.device

    def _to_device(self, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.to(self._device, non_blocking=True)
        if self._plan.channels_last:  # a cnn's (N, C, H, W) batch
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        s = self.settings
        params, kw = model.parameters(), {"lr": s.lr, "weight_decay": s.weight_decay}
        if s.optimizer == "adamw":
            return torch.optim.AdamW(params, **kw)
        if s.optimizer == "adam":
            return torch.optim.Adam(params, **kw)
        if s.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, **kw)
        return torch.optim.SGD(params, momentum=0.9, **kw)

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        s = self.settings
        if s.schedule == "cosine":  # stepped once per epoch, down to 0 at the last one
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.epochs)
        if s.schedule == "plateau":
            # Halve the rate after half the early-stopping patience without improvement,
            # so a lower rate gets its chance before early stopping ends the fit.
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=0.5, patience=max(1, s.patience // 2))
        return None

    def _loader(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        from torch.utils.data import DataLoader, TensorDataset

        workers = self._plan.workers
        # The loader draws its workers' seeds from a generator of its own: it draws once per
        # epoch, or once per fit with persistent workers, and that must not move the shuffle.
        return DataLoader(TensorDataset(x, y),
                          sampler=ShuffledBatches(len(x), self.settings.batch_size, generator,
                                                  self._world),
                          batch_size=None, collate_fn=_as_is, num_workers=workers,
                          pin_memory=self._plan.pin_memory, persistent_workers=workers > 0,
                          generator=torch.Generator().manual_seed(self.seed))

    def _loss(self, model: torch.nn.Module, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return F.cross_entropy(out, y)
        # Mean squared error of standardised values: the gradient scale does not depend on
        # the target's units (reported losses are converted back to those units).
        return F.mse_loss(model.standardize(out), model.standardize(y))

    def _metric_sum(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return (out.argmax(dim=1) == y).sum()
        return (out - y).abs().sum()

    def _loss_units(self, model: torch.nn.Module) -> float:
        """Factor from the optimised loss to the target's units (MSE scales with std²)."""
        return float(model.target_std) ** 2 if self.task == "regression" else 1.0

    # ------------------------------------------------------------------------ training

    def fit(self, x, y, x_val=None, y_val=None) -> None:
        s = self.settings
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x_val is None or y_val is None or len(x_val) == 0:
            x_val = y_val = None
        self.image_shape = check_image_shape(self.estimator, self.image_shape, x.shape[1])
        outputs = n_outputs(self.task, y, y_val)
        mean, std = target_scale(self.task, y, s)
        self.config = self._architecture(x.shape[1], outputs)
        device, self.device = pick_device()
        world = self._world = current_world()
        native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(
            including_emulation=False)
        self._plan, warnings = device_plan(device, self.estimator, s, native_bf16)
        threads = f" ({fit_threads()} threads)" if device.type == "cpu" else ""
        where = f"training on {self.device}{threads}"
        if world.distributed:
            import torch.distributed as dist

            self.device = f"{self.device} x {world.size} processes ({dist.get_backend()})"
            where = (f"world size {world.size} ({dist.get_backend()}); rank 0 {where}; "
                     f"batch_size {s.batch_size} split across the ranks")
        if world.leader:
            announce("torch", f"{where}: {self._plan.describe()}", warnings)
        y_dtype = np.int64 if self.task == "classification" else np.float32
        y = np.asarray(y, dtype=y_dtype)
        y_val = None if y_val is None else np.asarray(y_val, dtype=y_dtype)

        with _fit_mode(self._device):
            torch.manual_seed(self.seed)
            model = build_net(self.config)
            if self.task == "regression":
                model.set_target_scale(mean, std)
            model.to(self._device)
            if self._plan.channels_last:
                model.to(memory_format=torch.channels_last)
            self.model = model
            net = model
            if world.distributed:
                from torch.nn.parallel import DistributedDataParallel

                # Dropout masks differ by rank (as they differ by row in one process).
                torch.manual_seed(self.seed + 7919 * world.rank)
                net = DistributedDataParallel(
                    model, device_ids=[self._device.index] if self._device.type == "cuda"
                    else None)
            optimizer = self._optimizer(model)
            scheduler = self._scheduler(optimizer)
            # bf16 needs no loss scaling; cards without it (T4, V100) get fp16 with scaling.
            scaler = torch.amp.GradScaler(self._device.type, enabled=self._plan.loss_scaling)
            generator = torch.Generator().manual_seed(self.seed)
            loader = self._loader(self._tensor(x), torch.from_numpy(_writable(y)), generator)
            val = None
            if x_val is not None:  # on the device once: every epoch evaluates the same rows
                val = (self._to_device(self._tensor(x_val)),
                       torch.from_numpy(_writable(y_val)).to(self._device))

            progress, best_state = _Progress(), None
            ckpt = self.checkpoint_dir / CHECKPOINT_FILE if self.checkpoint_dir else None
            key = self.fit_key({"architecture": self.config, "amp": str(self._plan.amp_dtype),
                                "channels_last": self._plan.channels_last}, x, y, x_val, y_val)
            restored = _read_checkpoint(ckpt, key) if ckpt else None
            if restored is not None:
                progress, best_state = self._restore(restored, model, optimizer, scheduler,
                                                     scaler, generator)
                if world.leader:
                    say(f"torch: resuming from {ckpt} after epoch {progress.epoch}/{s.epochs}")

            metric = metric_name(self.task)
            for epoch in range(progress.epoch, s.epochs):
                if progress.stopped:
                    break
                lr = optimizer.param_groups[0]["lr"]
                logs = self._train_epoch(model, loader, optimizer, scaler, epoch, net)
                monitor = logs["loss"]
                if val is not None:
                    logs["val_loss"], logs[f"val_{metric}"] = self._agreed(
                        self._evaluate(model, *val))
                    monitor = logs["val_loss"]
                    if monitor < progress.best_loss:
                        progress.best_loss, progress.best_epoch = monitor, epoch + 1
                        progress.bad_epochs = 0
                        best_state = {k: v.detach().to("cpu", copy=True)
                                      for k, v in model.state_dict().items()}
                    else:
                        progress.bad_epochs += 1
                        progress.stopped = progress.bad_epochs >= max(1, s.patience)
                for name, value in logs.items():
                    progress.history.setdefault(name, []).append(value)
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(monitor)
                elif scheduler is not None:
                    scheduler.step()
                progress.epoch = epoch + 1
                if world.leader:
                    say(epoch_line(epoch + 1, s.epochs, logs, lr))
                if progress.stopped and world.leader:
                    say(f"torch: early stopping after epoch {epoch + 1}: val_loss has not "
                        f"improved for {progress.bad_epochs} epochs; keeping epoch "
                        f"{progress.best_epoch} (val_loss {progress.best_loss:.4g})")
                if ckpt is not None:
                    rngs = _rank_rng_states(world)  # a collective: every rank takes part
                    if world.leader:
                        _write_checkpoint(ckpt, key, model, optimizer, scheduler, scaler,
                                          generator, progress, best_state, rngs)
            if best_state is not None:
                model.load_state_dict(best_state)
            self.history = progress.history
        model.eval()

    def _agreed(self, values: tuple[float, ...]) -> tuple[float, ...]:
        """``values`` as rank 0 computed them, on every rank (as they are outside a group):
        early stopping and the plateau schedule then decide alike everywhere."""
        if not self._world.distributed:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device)
        dist.broadcast(t, 0)
        return tuple(t.tolist())

    def _train_epoch(self, model, loader, optimizer, scaler, epoch: int,
                     net: torch.nn.Module | None = None) -> dict[str, float]:
        """One pass over the training rows; ``net`` is the model as it is run forward (its
        DistributedDataParallel wrapper in a process group)."""
        from tqdm.auto import tqdm

        net = model if net is None else net
        world = self._world
        model.train()
        # Per step only references are kept (no extra kernels, no GPU sync); the epoch's
        # loss and metric are reduced once at its end. Outputs take rows x classes floats.
        losses, outs, targets = [], [], []
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{self.settings.epochs}",
                   unit="batch", file=sys.stderr, leave=False, disable=not sys.stderr.isatty())
        every = max(1, len(loader) // 10)  # reading the loss back syncs the GPU: not each step
        for step, (xb, yb) in enumerate(loader, start=1):
            xb, yb = self._to_device(xb), yb.to(self._device, non_blocking=True)
            with self._plan.autocast():
                out = net(xb)
            if len(yb):
                loss = self._loss(model, out, yb)
            else:  # a rank's empty slice of a last batch smaller than the world
                loss = out.float().sum() * 0.0
            optimized = loss
            if world.distributed:
                # DDP averages gradients over ranks: scaling each rank's mean loss by its
                # share of the whole batch times the world size makes that average the
                # gradient of the whole batch's mean loss, as in one process.
                share = len(yb) * world.size / loader.sampler.global_rows(step - 1)
                optimized = loss * share
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(optimized).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.detach())
            outs.append(out.detach())
            targets.append(yb)
            if not bar.disable:
                bar.update(1)
                if step % every == 0:
                    recent = torch.stack(losses[-every:]).mean().item()
                    bar.set_postfix(loss=f"{recent * self._loss_units(model):.4g}")
        bar.close()
        with torch.no_grad():
            sizes = torch.tensor([len(t) for t in targets], dtype=torch.float32,
                                 device=self._device)
            if world.distributed:  # the whole epoch's sums, over every rank's rows
                import torch.distributed as dist

                sums = torch.stack([(torch.stack(losses).float() * sizes).sum(),
                                    self._metric_sum(torch.cat(outs), torch.cat(targets)),
                                    sizes.sum()]).double()
                dist.all_reduce(sums)
                loss_sum, metric_sum, rows = sums.tolist()
                loss = loss_sum / rows * self._loss_units(model)
                metric = metric_sum / rows
            else:
                rows = float(sizes.sum())
                loss = (torch.stack(losses).float() * sizes).sum().item() / rows
                loss *= self._loss_units(model)
                metric = self._metric_sum(torch.cat(outs), torch.cat(targets)).item() / rows
        if not math.isfinite(loss):
            raise SlipwayError(
                f"the {self.estimator} diverged: training loss is {loss} in epoch {epoch + 1}",
                f"lower train.hyperparameters.{self.estimator}.lr in params.yaml, or check the "
                "features are scaled",
            )
        return {"loss": loss, metric_name(self.task): metric}

    @torch.inference_mode()
    def _evaluate(self, model, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Loss and metric over validation rows already on the device (see fit)."""
        model.eval()
        loss_sum = torch.zeros((), device=self._device)
        metric_sum = torch.zeros((), device=self._device)
        for start in range(0, len(x), EVAL_BATCH):
            xb, yb = x[start:start + EVAL_BATCH], y[start:start + EVAL_BATCH]
            with self._plan.autocast():
                out = model(xb)
            loss_sum += self._loss(model, out, yb) * len(yb)
            metric_sum += self._metric_sum(out, yb)
        return (loss_sum.item() / len(x) * self._loss_units(model), metric_sum.item() / len(x))

    def _restore(self, restored, model, optimizer, scheduler, scaler, generator):
        meta, tensors = restored
        part = {p: {k[len(p) + 1:]: v for k, v in tensors.items() if k.startswith(p + ".")}
                for p in ("model", "best", "optim", "rng")}
        model.load_state_dict(part["model"])
        state: dict[int, dict[str, Any]] = {}
        for name, value in part["optim"].items():
            pid, key = name.split(".", 1)
            state.setdefault(int(pid), {})[key] = value
        for pid, values in meta["optimizer"]["state"].items():
            state.setdefault(int(pid), {}).update(values)
        optimizer.load_state_dict({"state": state,
                                   "param_groups": meta["optimizer"]["param_groups"]})
        if scheduler is not None:
            scheduler.load_state_dict(meta["scheduler"])
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        # Each rank its own random state (dropout); a rank the checkpoint has none of (it
        # was written by fewer processes) takes rank 0's.
        mine = f".{self._world.rank}" if self._world.rank else ""
        rng = part["rng"]
        torch.set_rng_state(rng.get(f"cpu{mine}", rng["cpu"]))
        generator.set_state(rng["loader"])
        if "cuda" in rng and torch.cuda.is_available():  # the training GPU's
            torch.cuda.set_rng_state(rng.get(f"cuda{mine}", rng["cuda"]))
        return _Progress(**meta["progress"]), (part["best"] or None)

    # ---------------------------------------------------------------------- predicting

    def _outputs(self, x: np.ndarray) -> torch.Tensor:
        if self.model is None:
            raise SlipwayError("the torch trainer has not been fitted", "call fit() first")
        x_t = self._tensor(x)
        self.model.eval()
        outs = []
        with torch.inference_mode(), self._plan.autocast():
            for start in range(0, len(x_t), EVAL_BATCH):
                outs.append(self.model(self._to_device(x_t[start:start + EVAL_BATCH]))
                            .float().cpu())
        if not outs:
            width = self.config["n_outputs"]
            return torch.zeros((0, width) if self.task == "classification" else (0,))
        return torch.cat(outs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self._outputs(x)
        if self.task == "classification":
            return out.argmax(dim=1).numpy().astype(np.int64)
        return out.numpy().astype(np.float64)

    def predict_proba(self, x: np.ndarray) -> np.ndarray | None:
        if self.task != "classification":
            return None
        return torch.softmax(self._outputs(x).double(), dim=1).numpy()

    # ------------------------------------------------------------------- save and load

    def save(self, directory: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        if self.model is None:
            raise SlipwayError("the torch trainer has not been fitted", "call fit() first")
        directory = Path(directory)
        with atomic_path(directory / MODEL_FILE) as tmp:
            save_file(_cpu(self.model.state_dict()), str(tmp))
        meta = {**self.describe(), "architecture": self.config, "files": [MODEL_FILE]}
        write_json(directory / META_FILE, meta)
        return meta

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any], hashes: dict[str, str]) -> Trainer:
        """Reopen a saved model on CPU (safetensors: no code runs while loading)."""
        from safetensors import SafetensorError
        from safetensors.torch import load as load_weights

        path = Path(directory) / MODEL_FILE
        data = safe_load.read_verified(path, hashes.get(MODEL_FILE))
        trainer = cls(meta["task"], meta["estimator"], meta["hyperparameters"], meta["seed"],
                      image_shape=meta.get("image_shape"))
        trainer.device = meta.get("device", "cpu")  # where it was trained (lineage)
        if "architecture" not in meta:
            raise SlipwayError(f"{Path(directory) / META_FILE} has no architecture to rebuild "
                               "the network from", "retrain the model")
        trainer.config = meta["architecture"]
        model = build_net(trainer.config)
        try:
            model.load_state_dict(load_weights(data))  # the bytes that were hashed
        except (RuntimeError, SafetensorError) as err:  # missing keys, wrong shapes, garbled
            raise SlipwayError(f"{path} does not hold the weights {META_FILE} describes: {err}",
                               "restore the model version or retrain it") from None
        trainer.model = model.eval()
        return trainer


# --------------------------------------------------------------------------- checkpoints

def _writable(a: np.ndarray) -> np.ndarray:
    """The array, or a copy of it when read-only (Arrow-backed columns are): torch shares
    the memory of what it wraps and warns when it could not write to it."""
    return a if a.flags.writeable else a.copy()


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors wants contiguous tensors; channels-last is not)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _rank_rng_states(world: World) -> list[dict[str, torch.Tensor]] | None:
    """Every rank's random states (rank order), for rank 0's checkpoint; None in one
    process. A collective: all ranks call it."""
    if not world.distributed:
        return None
    import torch.distributed as dist

    mine = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        mine["cuda"] = torch.cuda.get_rng_state()
    states: list[Any] = [None] * world.size
    dist.all_gather_object(states, mine)
    return states


def checkpoint_epoch(path: Path) -> int:
    """Epochs a checkpoint has finished (0: none, or no readable checkpoint)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return int(json.loads((f.metadata() or {})["slipway"])["progress"]["epoch"])
    except Exception:  # missing or garbled: nothing to resume from
        return 0


def _write_checkpoint(path, key, model, optimizer, scheduler, scaler, generator,
                      progress: _Progress, best_state, rank_rngs=None) -> None:
    """The whole training state in one safetensors file, replaced atomically.

    ``rank_rngs``: every rank's random states in a process group (rank 0's are the plain
    ``rng.cpu`` / ``rng.cuda``; rank r's ``rng.cpu.r``)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in (best_state or {}).items()})
    opt = optimizer.state_dict()
    other: dict[str, dict[str, Any]] = {}
    for pid, values in opt["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                other.setdefault(str(pid), {})[name] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors["rng.loader"] = generator.get_state()
    if torch.cuda.is_available():  # the GPU the fit runs on (pick_device's current one)
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for rank, states in enumerate(rank_rngs or []):
        if rank:
            tensors.update({f"rng.{name}.{rank}": state for name, state in states.items()})
    meta = {
        "fingerprint": key,
        "progress": asdict(progress),
        "optimizer": {"state": other, "param_groups": opt["param_groups"]},
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
    }
    with atomic_path(path) as tmp:
        # One metadata entry: safetensors writes a map's entries in no fixed order.
        save_file(_cpu(tensors), str(tmp), metadata={"slipway": json.dumps(meta)})


def _read_checkpoint(path: Path, key: str):
    """``(meta, tensors)`` of this fit's checkpoint, or None to start afresh."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {})["slipway"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # a garbled file: training again is the fix
        say(f"torch: ignoring unreadable checkpoint {path} ({err}); starting afresh")
        return None
    if meta.get("fingerprint") != key:
        say(f"torch: ignoring checkpoint {path}: it is from a different fit (other data or "
            "settings); starting afresh")
        return None
    return meta, tensors
