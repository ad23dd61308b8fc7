"""``make bench-train``: training throughput of the torch trainer against plain PyTorch.

Side by side in one run, on synthetic data (so nothing is downloaded):

1. samples/s of :class:`components.trainers.torch.TorchTrainer` (MLP on tabular rows, CNN on
   CIFAR-shaped images) against a bare PyTorch loop of the same model, optimizer and batch
   size (target ratio >= 0.9: the trainer's checkpoints, progress, metrics and seeding may
   cost at most a tenth), and against the tutorial-style loop (batch size 4, fp32, a
   default ``DataLoader``, no loader tuning);
2. on a CUDA machine: ResNet-18 (CIFAR variant) on CIFAR-shaped synthetic data with bf16
   autocast and channels-last, eager and ``torch.compile``: images/s and the share of the
   GPU's peak dense bf16 FLOP/s it reaches (FLOPs counted by
   ``torch.utils.flop_counter``). Skipped, and said so, without a GPU;
3. the distributed fit (:mod:`components.trainers.distributed`): samples/s of the mlp as 1
   and as 2 torchrun processes on the CPU, launch included and in the fit alone, and the
   scaling efficiency of each (``--distributed-only`` measures just that).

Each figure is the median of ``--repeat`` timed runs after a warm-up, the loops taking
turns. Writes
``build/benchmarks/train.json``.

    python -m benchmarks.train [--repeat 3] [--quick] [--distributed-only]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

# Peak dense bf16 tensor-core throughput, FLOP/s (vendor datasheets, without sparsity), by a
# part of the name torch reports; the more specific names first. Cards without native bf16
# (T4, V100) are skipped: the benchmark measures bf16.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "H100": 989e12,
             "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def peak_bf16(gpu_name: str) -> float | None:
    """The datasheet's dense bf16 FLOP/s of a GPU by the name torch reports, or None."""
    return next((v for k, v in PEAK_BF16.items() if k in gpu_name), None)


def hardware() -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm-up: allocator, kernels, lazy imports
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def data(kind: str, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    rng = np.random.default_rng(seed)
    if kind == "mlp":
        x = rng.standard_normal((rows, 64), dtype=np.float32)
        y = (x[:, :10].argmax(1)).astype(np.int64)  # learnable: the largest of 10 features
        return x, y, None
    x = rng.standard_normal((rows, 3 * 32 * 32), dtype=np.float32)
    y = rng.integers(0, 10, rows).astype(np.int64)
    return x, y, (3, 32, 32)


def settings(kind: str, epochs: int, batch: int) -> dict[str, Any]:
    common = {"epochs": epochs, "patience": epochs, "batch_size": batch, "optimizer": "adamw",
              "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine", "dropout": 0.0}
    if kind == "mlp":
        return {**common, "hidden": [256, 128]}
    return {**common, "channels": [32, 64], "hidden": [120, 84]}


def trainer_run(kind: str, x, y, shape, epochs: int, batch: int):
    from components.trainers.torch import TorchTrainer

    def run() -> None:
        trainer = TorchTrainer("classification", kind, settings(kind, epochs, batch), 0,
                               image_shape=shape)
        with contextlib.redirect_stderr(io.StringIO()):  # its per-epoch progress lines
            trainer.fit(x, y)
    return run


def bare_run(kind: str, x, y, shape, epochs: int, batch: int):
    """The loop an expert writes by hand: same net, optimizer, schedule and batch size."""
    import torch

    from components.trainers.loop import net_settings
    from components.trainers.nets import build_net
    from components.trainers.torch import device_plan, fit_threads, pick_device

    device, _ = pick_device()
    # The same arithmetic as the trainer's on this device (bf16 autocast and channels-last
    # on a GPU): the ratio is the trainer's overhead, not a difference in precision.
    plan, _ = device_plan(device, kind, net_settings("torch", kind, settings(kind, epochs,
                                                                             batch)),
                          device.type == "cuda"
                          and torch.cuda.is_bf16_supported(including_emulation=False))
    config = {"task": "classification", "estimator": kind, "n_features": x.shape[1],
              "n_outputs": 10, "hidden": settings(kind, epochs, batch)["hidden"],
              "channels": [32, 64], "image_shape": list(shape) if shape else None,
              "dropout": 0.0}

    def run() -> None:
        torch.set_num_threads(fit_threads())
        torch.manual_seed(0)
        net = build_net(config).to(device)
        memory = torch.channels_last if plan.channels_last else torch.contiguous_format
        net.to(memory_format=memory)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        scaler = torch.amp.GradScaler(device.type, enabled=plan.loss_scaling)
        xt = torch.from_numpy(x).to(device)
        yt = torch.from_numpy(y).to(device)
        if shape:
            xt = xt.view(len(xt), *shape).contiguous(memory_format=memory)
        net.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(xt), device=device).split(batch):
                with plan.autocast():
                    out = net(xt[idx])
                loss = torch.nn.functional.cross_entropy(out, yt[idx])
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return run


def tutorial_run(kind: str, x, y, shape, rows: int):
    """The tutorial loop: batch size 4, fp32, a default DataLoader, one pass over ``rows``."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from components.trainers.nets import build_net
    from components.trainers.torch import fit_threads

    config = {"task": "classification", "estimator": kind, "n_features": x.shape[1],
              "n_outputs": 10, "hidden": settings(kind, 1, 4)["hidden"], "channels": [32, 64],
              "image_shape": list(shape) if shape else None, "dropout": 0.0}
    xs = torch.from_numpy(x[:rows])
    if shape:
        xs = xs.view(len(xs), *shape)
    loader = DataLoader(TensorDataset(xs, torch.from_numpy(y[:rows])), batch_size=4,
                        shuffle=True)

    def run() -> None:
        torch.set_num_threads(fit_threads())
        torch.manual_seed(0)
        net = build_net(config)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        for xb, yb in loader:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xb), yb)
            loss.backward()
            opt.step()
    return run


def throughput(kind: str, rows: int, epochs: int, batch: int, tutorial_rows: int,
               repeat: int) -> dict[str, Any]:
    """samples/s of the three loops, interleaved (trainer, bare, tutorial, trainer, ...) so
    that drift in the machine's speed during the run falls on all of them alike."""
    x, y, shape = data(kind, rows)
    loops = {
        "slipway trainer": (trainer_run(kind, x, y, shape, epochs, batch), rows * epochs),
        "bare PyTorch loop": (bare_run(kind, x, y, shape, epochs, batch), rows * epochs),
        "tutorial loop (batch 4)": (tutorial_run(kind, x, y, shape, tutorial_rows),
                                    tutorial_rows),
    }
    times: dict[str, list[float]] = {name: [] for name in loops}
    for fn, _ in loops.values():
        fn()  # warm-up: allocator, kernels, lazy imports
    for _ in range(repeat):
        for name, (fn, _) in loops.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    results = {}
    for name, (_, samples) in loops.items():
        results[name] = {"samples_per_s": samples / statistics.median(times[name]),
                         "seconds": times[name]}
        print(f"  {kind:4} {name:26} {results[name]['samples_per_s']:>10.0f} samples/s",
              file=sys.stderr, flush=True)
    return {"rows": rows, "epochs": epochs, "batch_size": batch, "runs": results}


def distributed_throughput(rows: int, epochs: int, batch: int, repeat: int,
                           short_epochs: int = 2) -> dict[str, Any]:
    """samples/s of the mlp fit as 1 and as 2 torchrun processes on the CPU (gloo), the
    same global batch and total cores (2 threads for one process, 1 each for two), and the
    scaling efficiency: samples/s with 2 over twice that with 1.

    Two figures per way of running, because a launch (torchrun, process start, imports,
    joining the group) costs seconds whatever the fit's size:

    - *whole*: the ``epochs`` fit timed from the launch to the fitted model, as a train task
      pays it;
    - *fit*: the fit without the launch, from the same launches at two sizes: the extra
      samples of the ``epochs`` fit over a ``short_epochs`` one, divided by the extra time.
      The launch's cost is what the ``short_epochs`` run took beyond its samples at that rate.

    The peers, run in turns with it: the in-process fit (no launch at all) and a bare DDP
    loop (:mod:`benchmarks.ddp_bare`: the same net, optimizer, batches and gloo, nothing of
    the trainer's), launched and measured the same way, so the trainer's share of the cost
    and the machine's own cost of data parallelism can be told apart.
    """
    from components.trainers import distributed
    from components.trainers.torch import TorchTrainer

    x, y, _ = data("mlp", rows)

    def launched(nproc: int, n_epochs: int):
        hp = settings("mlp", n_epochs, batch)

        def run() -> None:
            trainer = TorchTrainer("classification", "mlp", hp, 0)
            distributed.launch(trainer, x, y, None, None, nproc, quiet=True)
        return run

    def in_process(n_epochs: int):
        hp = settings("mlp", n_epochs, batch)

        def run() -> None:
            with contextlib.redirect_stderr(io.StringIO()):
                TorchTrainer("classification", "mlp", hp, 0).fit(x, y)
        return run

    def bare(nproc: int, n_epochs: int):
        def run() -> None:
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // nproc)))
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nnodes", "1", "--nproc-per-node", str(nproc),
                            "-m", "benchmarks.ddp_bare", str(rows), str(n_epochs), str(batch)],
                           env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return run

    ways = {"in-process, 1 process": in_process, "torchrun, 1 process": partial(launched, 1),
            "torchrun, 2 processes": partial(launched, 2),
            "bare DDP loop, 1 process": partial(bare, 1),
            "bare DDP loop, 2 processes": partial(bare, 2)}
    runs = {(name, n): make(n) for name, make in ways.items() for n in (short_epochs, epochs)}
    times: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(repeat):
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    out: dict[str, Any] = {"rows": rows, "epochs": epochs, "short_epochs": short_epochs,
                           "batch_size": batch, "runs": {}}
    print(f"  {'mlp':5} {'':26} {'whole':>10} {'fit':>10} {'launch':>8}", file=sys.stderr)
    for name in ways:
        long_s = statistics.median(times[(name, epochs)])
        short_s = statistics.median(times[(name, short_epochs)])
        fit_sps = rows * (epochs - short_epochs) / max(long_s - short_s, 1e-9)
        launch_s = short_s - rows * short_epochs / fit_sps
        out["runs"][name] = {"samples_per_s": rows * epochs / long_s,
                             "fit_samples_per_s": fit_sps, "launch_seconds": launch_s,
                             "seconds": times[(name, epochs)],
                             "short_seconds": times[(name, short_epochs)]}
        print(f"  {'mlp':5} {name:26} {rows * epochs / long_s:>10.0f} {fit_sps:>10.0f} "
              f"{launch_s:>7.1f}s", file=sys.stderr, flush=True)
    one, two = out["runs"]["torchrun, 1 process"], out["runs"]["torchrun, 2 processes"]
    out["scaling_efficiency"] = two["samples_per_s"] / (2 * one["samples_per_s"])
    out["fit_scaling_efficiency"] = two["fit_samples_per_s"] / (2 * one["fit_samples_per_s"])
    bare1, bare2 = (out["runs"][f"bare DDP loop, {n}"] for n in ("1 process", "2 processes"))
    out["bare_fit_scaling_efficiency"] = (bare2["fit_samples_per_s"]
                                          / (2 * bare1["fit_samples_per_s"]))
    out["fit_vs_bare"] = {n: out["runs"][f"torchrun, {n}"]["fit_samples_per_s"]
                          / out["runs"][f"bare DDP loop, {n}"]["fit_samples_per_s"]
                          for n in ("1 process", "2 processes")}
    return out


def resnet18(num_classes: int = 10):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool), as in the CIFAR literature."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

        def forward(self, x):
            return nn.functional.relu(self.body(x) + self.skip(x))

    layers, cin = [], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(inplace=True), *layers, nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(512, num_classes))


def resnet_throughput(device, batch: int, steps: int, repeat: int,
                      modes: tuple[str, ...] = ("eager", "torch.compile"),
                      peak: float | None = None) -> dict[str, Any]:
    """ResNet-18 training steps (SGD, bf16 autocast, channels-last) on CIFAR-shaped random
    data: images/s, the FLOP/s reached and their share of ``peak``, for each of ``modes``.

    FLOPs are counted once, on an eager step (``torch.utils.flop_counter``: convolutions and
    matrix products, forward and backward): compiling fuses kernels but leaves the
    arithmetic as it is, so the same count holds for the compiled model.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(device)
    x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    out: dict[str, Any] = {"batch_size": batch, "steps": steps, "peak_bf16_flops": peak}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    flops_per_step = None
    for label in modes:
        torch.manual_seed(0)
        net = resnet18().to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        model = torch.compile(net) if label == "torch.compile" else net

        def step(model=model, opt=opt) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if flops_per_step is None:
            with FlopCounterMode(display=False) as counter:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = torch.nn.functional.cross_entropy(net(x), y)
                loss.backward()
            net.zero_grad(set_to_none=True)
            flops_per_step = counter.get_total_flops()
            out["flops_per_image"] = flops_per_step / batch

        def run(step=step) -> None:
            for _ in range(steps):
                step()
            sync()
        median = statistics.median(timed(run, repeat))  # the warm-up compiles
        achieved = flops_per_step * steps / median
        out[label] = {"images_per_s": batch * steps / median, "tflops": achieved / 1e12,
                      "share_of_peak": achieved / peak if peak else None,
                      "seconds_per_step": median / steps}
        print(f"  resnet18 {label:14} {out[label]['images_per_s']:>10.0f} images/s  "
              f"{achieved / 1e12:6.1f} TFLOP/s", file=sys.stderr, flush=True)
    return out


def gpu_resnet(repeat: int, batch: int = 512, steps: int = 50) -> dict[str, Any]:
    """:func:`resnet_throughput` on the first CUDA device, or why it was skipped."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    name = torch.cuda.get_device_name(0)
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        return {"skipped": f"{name} has no native bf16 (the benchmark measures bf16)"}
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convs
    return {"gpu": name, **resnet_throughput("cuda", batch, steps, repeat,
                                             peak=peak_bf16(name))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller data (a smoke run)")
    parser.add_argument("--json", default="build/benchmarks/train.json")
    parser.add_argument("--distributed-only", action="store_true",
                        help="only the 1-vs-2-process distributed fit")
    args = parser.parse_args(argv)
    scale = 4 if args.quick else 1
    hw = hardware()
    print(f"hardware: {hw}", file=sys.stderr)
    print("measuring (median of each after a warm-up) ...", file=sys.stderr)
    ddp = distributed_throughput(16384 // scale, 60 // scale, 256, args.repeat)
    print(f"\ndistributed mlp fit on CPU: 2 processes give {ddp['fit_scaling_efficiency']:.2f} "
          "of twice 1 process's samples/s in the fit (scaling efficiency), "
          f"{ddp['scaling_efficiency']:.2f} launch included; a bare DDP loop "
          f"{ddp['bare_fit_scaling_efficiency']:.2f}; the trainer's fit "
          + ", ".join(f"{v:.2f}x the bare loop's with {k}" for k, v in ddp["fit_vs_bare"].items()))
    if args.distributed_only:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"hardware": hw, "distributed": ddp}, indent=2))
        print(f"written to {args.json}")
        return 0
    report = {
        "distributed": ddp,
        "hardware": hw,
        "mlp": throughput("mlp", 32768 // scale, 6, 256, 4096 // scale, args.repeat),
        "cnn": throughput("cnn", 4096 // scale, 2, 64, 1024 // scale, args.repeat),
        "resnet18_gpu": gpu_resnet(args.repeat),
    }
    print(f"\n{'model':5} {'loop':26} {'samples/s':>11} {'vs bare':>8} {'vs tutorial':>12}")
    for kind in ("mlp", "cnn"):
        runs = report[kind]["runs"]
        bare = runs["bare PyTorch loop"]["samples_per_s"]
        tut = runs["tutorial loop (batch 4)"]["samples_per_s"]
        for name, r in runs.items():
            print(f"{kind:5} {name:26} {r['samples_per_s']:>11.0f} "
                  f"{r['samples_per_s'] / bare:>8.2f} {r['samples_per_s'] / tut:>12.1f}")
        report[kind]["trainer_vs_bare"] = runs["slipway trainer"]["samples_per_s"] / bare
        report[kind]["trainer_vs_tutorial"] = runs["slipway trainer"]["samples_per_s"] / tut
    gpu = report["resnet18_gpu"]
    if "skipped" in gpu:
        print(f"\nResNet-18 bf16 on GPU: skipped ({gpu['skipped']})")
    else:
        for label in ("eager", "torch.compile"):
            r = gpu[label]
            share = f"{r['share_of_peak']:.1%}" if r["share_of_peak"] else "n/a"
            print(f"\nResNet-18 bf16 channels-last {label} on {gpu['gpu']}: "
                  f"{r['images_per_s']:.0f} images/s, {r['tflops']:.1f} TFLOP/s, "
                  f"{share} of peak")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
