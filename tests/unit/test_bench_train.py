"""``make bench-train``'s ResNet-18 measurement, run on the CPU at a tiny size.

The figures themselves come from a GPU (``docs/benchmarks.md``); these tests check what
turns timings into them (the FLOP count, images/s, the share of peak) on the real model, so
that a GPU run does not first discover a broken benchmark."""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

from benchmarks.train import peak_bf16, resnet_throughput  # noqa: E402

# ResNet-18's CIFAR variant does 0.556 G multiply-adds per 32x32 image forward (the figure
# the CIFAR literature quotes): 1.11 GFLOP. A training step adds the backward pass, twice
# the forward (gradients of inputs and of weights), less the first convolution's input
# gradient, which nothing needs.
FORWARD_FLOPS = 2 * 0.556e9


def _check(result: dict, label: str, peak: float) -> None:
    run = result[label]
    assert run["images_per_s"] > 0
    achieved = result["flops_per_image"] * run["images_per_s"]
    assert run["tflops"] == pytest.approx(achieved / 1e12)
    assert run["share_of_peak"] == pytest.approx(achieved / peak)
    assert run["seconds_per_step"] == pytest.approx(result["batch_size"] / run["images_per_s"])


def test_resnet18_flops_and_share_of_peak_on_cpu():
    result = resnet_throughput("cpu", batch=2, steps=1, repeat=1, modes=("eager",), peak=1e12)
    per_image = result["flops_per_image"]
    assert 2.9 * FORWARD_FLOPS < per_image < 3.0 * FORWARD_FLOPS
    _check(result, "eager", 1e12)
    assert "torch.compile" not in result


@pytest.mark.slow
# Modules torch.compile imports use torch's own deprecated torch.jit.script_method.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on CPU needs a C compiler")
def test_resnet18_compiled_step_counts_the_same_flops():
    """The compiled path (inductor's CPU backend here, Triton on a GPU) counted from the
    eager model: the same arithmetic, so the same FLOPs per image."""
    result = resnet_throughput("cpu", batch=2, steps=1, repeat=1, modes=("torch.compile",),
                               peak=1e12)
    assert 2.9 * FORWARD_FLOPS < result["flops_per_image"] < 3.0 * FORWARD_FLOPS
    _check(result, "torch.compile", 1e12)


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("Tesla T4", None),  # no native bf16: skipped
        ("NVIDIA GeForce RTX 4090", None),  # not in the table: no share is printed
    ],
)
def test_peak_by_gpu_name(name, peak):
    assert peak_bf16(name) == peak
