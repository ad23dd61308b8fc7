"""Resource profiles in the compiled pipelines, and what a local run says about them.

``pipelines.cli.compile_all`` with ``kfp.task_profiles.train=gpu-h100``: the train
executor's container resources (accelerator type and count, CPU and memory requests and
limits, as params.yaml's gpu-h100 has them) and, in the platform spec (the YAML's second
document), its node selector, toleration and in-memory ``/dev/shm`` volume; a CPU profile
(ingest with cpu-small) has CPU and memory and nothing of a GPU; the tuning pipeline's trial
executor takes the ``trial`` task's profile. A local run with a GPU profile on train
(``python -m pipelines run training``) prints per task what it did not apply, warns that the
machine has no GPU and still succeeds on the CPU. An unknown profile name or framework exits 2
before anything runs.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from components.config import load_params
from components.stages import PIPELINE_STAGES
from pipelines.cli import compile_all, local_gpu_count

REPO = Path(__file__).resolve().parents[2]
TRAINING_TASKS = PIPELINE_STAGES["training"]


def compile_docs(out_dir: Path, *overrides: str, name: str = "training") -> tuple[dict, dict]:
    """The pipeline spec and the platform spec (empty if the YAML has none)."""
    params = load_params(REPO / "params.yaml", list(overrides))
    (path,) = compile_all(params, out_dir, [name])
    docs = list(yaml.safe_load_all(path.read_text()))
    assert 1 <= len(docs) <= 2, f"{len(docs)} YAML documents"
    return docs[0], (docs[1] if len(docs) == 2 else {})


def resources(spec: dict, component: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{component}-op"]["container"].get(
        "resources", {})


def k8s_executors(platform: dict) -> dict:
    return platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get(
        "executors", {})


def assert_cpu_and_memory(res: dict, profile: dict) -> None:
    assert res["resourceCpuRequest"] == profile["cpu_request"]
    assert res["resourceCpuLimit"] == profile["cpu_limit"]
    assert res["resourceMemoryRequest"] == profile["memory_request"]
    assert res["resourceMemoryLimit"] == profile["memory_limit"]


def assert_gpu_profile(spec: dict, platform: dict, component: str, profile: dict) -> None:
    res = resources(spec, component)
    assert_cpu_and_memory(res, profile)
    accelerator = res["accelerator"]
    assert accelerator["resourceType"] == profile["accelerator_type"] == "nvidia.com/gpu"
    assert accelerator["resourceCount"] == str(profile["accelerator_count"]) == "1"
    k8s = k8s_executors(platform)[f"exec-{component}-op"]
    assert k8s["nodeSelector"] == {"labels": profile["node_selector"]}
    assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}] == profile["tolerations"]
    assert k8s["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm",
                                      "medium": "Memory", "sizeLimit": profile["shm_size"]}]


@pytest.fixture(scope="module")
def profiles() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())["kfp"]["profiles"]


@pytest.fixture(scope="module")
def gpu_training(tmp_path_factory) -> tuple[dict, dict]:
    return compile_docs(tmp_path_factory.mktemp("compile-gpu"),
                        "kfp.task_profiles.train=gpu-h100")


def test_gpu_profile_sets_the_train_executors_resources(gpu_training, profiles):
    spec, platform = gpu_training
    h100 = profiles["gpu-h100"]
    assert (h100["cpu_request"], h100["memory_limit"]) == ("16", "200Gi")  # what is checked
    assert_gpu_profile(spec, platform, "train", h100)
    # kfp's numeric fields agree with the strings (16 CPUs, 128 GiB in GB).
    res = resources(spec, "train")
    assert (res["cpuRequest"], res["cpuLimit"]) == (16.0, 24.0)
    assert res["memoryRequest"] == pytest.approx(128 * 2**30 / 1e9)


def test_gpu_profile_is_the_only_one_in_the_platform_spec(gpu_training):
    _, platform = gpu_training
    assert set(k8s_executors(platform)) == {"exec-train-op"}


def test_cpu_profile_has_cpu_and_memory_and_nothing_of_a_gpu(gpu_training, profiles):
    spec, platform = gpu_training
    small = profiles["cpu-small"]
    for task in TRAINING_TASKS:
        if task == "train":
            continue
        res = resources(spec, task)
        assert_cpu_and_memory(res, small)  # the default profile
        assert "accelerator" not in res, task
        assert f"exec-{task}-op" not in k8s_executors(platform), task
    assert resources(spec, "ingest")["cpuRequest"] == 0.5


def test_cpu_profiles_compile_without_a_platform_spec(tmp_path, profiles):
    spec, platform = compile_docs(tmp_path, "kfp.task_profiles.ingest=cpu-large",
                                  "kfp.task_profiles.train=cpu-small")
    assert_cpu_and_memory(resources(spec, "ingest"), profiles["cpu-large"])
    assert_cpu_and_memory(resources(spec, "train"), profiles["cpu-small"])
    for task in TRAINING_TASKS:
        assert "accelerator" not in resources(spec, task), task
    # No node selector, toleration or volume anywhere: no kubernetes platform config at all.
    assert k8s_executors(platform) == {}


def test_tuning_trial_executor_takes_the_trial_profile(tmp_path, profiles):
    spec, platform = compile_docs(tmp_path, "kfp.task_profiles.trial=gpu-a100",
                                  "kfp.task_profiles.retrain=gpu-t4", name="tuning")
    assert_gpu_profile(spec, platform, "trial", profiles["gpu-a100"])
    assert_gpu_profile(spec, platform, "retrain", profiles["gpu-t4"])
    assert set(k8s_executors(platform)) == {"exec-trial-op", "exec-retrain-op"}
    for task in ("trials", "select"):
        res = resources(spec, task)
        assert_cpu_and_memory(res, profiles["cpu-small"])
        assert "accelerator" not in res


# ---- running locally --------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A temporary work tree with params.yaml (iris is bundled: no data file needed)."""
    root = tmp_path_factory.mktemp("profiles-local")
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    return root


def _notes(output: str) -> dict[str, str]:
    """The per-task lines under "Cluster settings this local run does not apply:"."""
    _, header, tail = output.partition("Cluster settings this local run does not apply:\n")
    assert header, f"no list of ignored settings in the output:\n{output}"
    notes = {}
    for line in tail.splitlines():
        if m := re.match(r"^  (\w+)\s+profile (.*)$", line):
            notes[m.group(1)] = m.group(2)
    return notes


@pytest.mark.slow
def test_local_run_with_a_gpu_profile_says_what_it_ignored(workdir, run_cmd, python_cmd):
    name = "t-" + uuid.uuid4().hex[:8]
    proc = run_cmd([*python_cmd, "-m", "pipelines", "run", "training",
                    "--set", "kfp.task_profiles.train=gpu-t4", "--set", "dataset=iris",
                    "--set", "train.cv_folds=2", "--set", f"package.model_name={name}",
                    "--set", f"kfp.pipeline_root={workdir / 'kfp'}"], cwd=workdir)
    notes = _notes(proc.stdout)
    assert set(notes) == set(TRAINING_TASKS)
    assert notes["train"] == (
        "gpu-t4: cpu 4/8, memory 16Gi/32Gi, accelerator 1x nvidia.com/gpu, node selector "
        "cloud.google.com/gke-accelerator=nvidia-tesla-t4, tolerations nvidia.com/gpu, "
        "/dev/shm 4Gi")
    for task in TRAINING_TASKS:
        if task != "train":
            assert notes[task] == "cpu-small: cpu 500m/1, memory 1Gi/2Gi", task
    assert "every task   its role's image (--runner containers uses it)" in proc.stdout
    warning = ("warning: task 'train' asks for 1x nvidia.com/gpu (profile gpu-t4) but this "
               "machine has no GPU: it runs on the CPU")
    if local_gpu_count() == 0:
        assert warning in proc.stderr
        assert proc.stderr.count("warning: task") == 1  # only train asks for a GPU
    else:
        assert warning not in proc.output
    # The run itself is unaffected: every task succeeds, the model is trained on the CPU.
    assert "pipeline training succeeded" in proc.stdout
    for task in TRAINING_TASKS:
        assert f"✓ {task}-op success" in proc.stdout, task
    assert re.search(r"^  model +sklearn/random_forest on cpu$", proc.stdout, re.M)
    assert re.search(rf"^  BentoML model +{name}:[0-9a-f]{{12}}$", proc.stdout, re.M)


def test_unknown_profile_exits_2_before_anything_runs(workdir, run_cmd, python_cmd):
    root = workdir / "kfp-bad-profile"
    proc = run_cmd([*python_cmd, "-m", "pipelines", "run", "training",
                    "--set", "kfp.task_profiles.train=gpu-h10",
                    "--set", f"kfp.pipeline_root={root}"], cwd=workdir, expect=2, timeout=120)
    assert ("error: invalid settings in params.yaml:\n  kfp: task train: unknown profile "
            "'gpu-h10': did you mean 'gpu-h100'?") in proc.stderr
    assert "Running pipeline" not in proc.output and "▸" not in proc.output
    assert not root.exists()  # the runner never started


def test_unknown_framework_exits_2_naming_the_valid_ones(workdir, run_cmd, python_cmd):
    root = workdir / "kfp-bad-framework"
    proc = run_cmd([*python_cmd, "-m", "pipelines", "run", "training",
                    "--set", "train.framework=jax",
                    "--set", f"kfp.pipeline_root={root}"], cwd=workdir, expect=2, timeout=120)
    assert "train.framework: Input should be 'sklearn', 'torch' or 'keras'" in proc.stderr
    assert "Running pipeline" not in proc.output and "▸" not in proc.output
    assert not root.exists()
