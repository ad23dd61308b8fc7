"""Resource profiles in the settings (components.config Profile, KfpParams) and what a local
run says it ignored (pipelines.profiles.ignored_locally).

A profile with an accelerator count but no accelerator type is refused; an unknown profile
name for a task or as the default, and an unknown task name, are SlipwayErrors from
``load_params(overrides=...)`` with a "did you mean"; the profiles of params.yaml load with
their values, and the words a local run prints for a GPU and a CPU profile are exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from components.config import TASKS, KfpParams, Profile, Toleration, load_params
from components.errors import SlipwayError
from pipelines.profiles import ignored_locally

PROFILE_NAMES = "cpu-large, cpu-small, gpu-a100, gpu-h100, gpu-t4"


@pytest.fixture
def params_path(repo) -> Path:
    return repo / "params.yaml"


@pytest.fixture
def raw_kfp(params_path) -> dict:
    return yaml.safe_load(params_path.read_text())["kfp"]


def _error(params_path: Path, *overrides: str) -> SlipwayError:
    with pytest.raises(SlipwayError) as err:
        load_params(params_path, list(overrides))
    return err.value


# ---- Profile --------------------------------------------------------------------------------

def test_accelerator_count_without_a_type_is_refused():
    with pytest.raises(ValidationError, match="accelerator_count needs accelerator_type"):
        Profile(accelerator_count=1)
    assert Profile(accelerator_type="nvidia.com/gpu", accelerator_count=2).wants_gpu
    assert not Profile().wants_gpu
    assert not Profile(accelerator_type="nvidia.com/gpu").wants_gpu  # count 0: no GPU asked


def test_accelerator_count_without_a_type_names_the_profile(params_path):
    err = _error(params_path, "kfp.profiles.gpu-t4.accelerator_type=null")
    assert ("kfp.profiles.gpu-t4: accelerator_count needs accelerator_type "
            "(e.g. nvidia.com/gpu)") in err.message
    err = _error(params_path, "kfp.profiles.mine={accelerator_count: 1}")
    assert "kfp.profiles.mine: accelerator_count needs accelerator_type" in err.message


@pytest.mark.parametrize(("override", "expected"), [
    ("kfp.profiles.gpu-t4.accelerator_count=-1",
     "kfp.profiles.gpu-t4.accelerator_count: Input should be greater than or equal to 0"),
    ("kfp.profiles.gpu-t4.gpus=2", "kfp.profiles.gpu-t4.gpus: unknown key"),
    ("kfp.profiles.gpu-t4.tolerations=[{key: nvidia.com/gpu, operator: Maybe}]",
     "kfp.profiles.gpu-t4.tolerations.0.operator: Input should be 'Equal' or 'Exists'"),
])
def test_bad_profile_values_name_the_key(params_path, override, expected):
    assert expected in _error(params_path, override).message


def test_profiles_of_params_yaml_load_with_their_values(params_path, raw_kfp):
    kfp = load_params(params_path).kfp

    assert set(kfp.profiles) == set(raw_kfp["profiles"])
    for name, raw in raw_kfp["profiles"].items():
        profile = kfp.profiles[name]
        for key in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
            assert getattr(profile, key) == raw[key], f"{name}.{key}"
        assert profile.wants_gpu is name.startswith("gpu-")
        if profile.wants_gpu:
            assert (profile.accelerator_type, profile.accelerator_count) \
                == (raw["accelerator_type"], raw["accelerator_count"])
            assert profile.node_selector == raw["node_selector"]
            assert profile.tolerations == [Toleration(**t) for t in raw["tolerations"]]
            assert profile.shm_size == raw["shm_size"]
        else:
            assert not profile.node_selector and not profile.tolerations
            assert profile.shm_size is None


# ---- KfpParams ------------------------------------------------------------------------------

def test_profile_for_uses_the_task_profile_or_the_default(params_path, raw_kfp):
    kfp = load_params(params_path).kfp

    for task in TASKS:
        name, profile = kfp.profile_for(task)
        assert name == raw_kfp["task_profiles"].get(task, raw_kfp["default_profile"]), task
        assert profile == kfp.profiles[name]
    kfp = load_params(params_path, ["kfp.task_profiles.train=gpu-h100",
                                    "kfp.default_profile=cpu-large"]).kfp
    assert kfp.profile_for("train")[0] == "gpu-h100"
    assert kfp.profile_for("ingest")[0] == "cpu-large"


def test_unknown_profile_for_a_task(params_path):
    err = _error(params_path, "kfp.task_profiles.train=gpu-h10")
    assert ("kfp: task train: unknown profile 'gpu-h10': did you mean 'gpu-h100'? "
            f"(valid: {PROFILE_NAMES})") in err.message
    assert "params.yaml" in err.fix


def test_unknown_default_profile(params_path):
    err = _error(params_path, "kfp.default_profile=cpu-smal")
    assert ("task (default): unknown profile 'cpu-smal': did you mean 'cpu-small'?"
            in err.message)


def test_a_profile_name_with_nothing_close_lists_the_valid_ones(params_path):
    err = _error(params_path, "kfp.task_profiles.trial=tpu-v5")
    assert f"task trial: unknown profile 'tpu-v5': valid: {PROFILE_NAMES}" in err.message
    assert "did you mean" not in err.message


def test_unknown_task_name(params_path):
    err = _error(params_path, "kfp.task_profiles.evalute=cpu-large")
    assert "task_profiles: unknown task 'evalute': did you mean 'evaluate'?" in err.message
    assert f"(valid: {', '.join(sorted(TASKS))})" in err.message


def test_kfp_params_alone_checks_profile_names():
    with pytest.raises(ValidationError, match="unknown profile 'gpu'"):
        KfpParams(default_profile="gpu", profiles={"cpu": Profile()})
    kfp = KfpParams(default_profile="cpu", task_profiles={"train": "gpu"},
                    profiles={"cpu": Profile(), "gpu": Profile(accelerator_type="x/gpu",
                                                                  accelerator_count=1)})
    assert kfp.profile_for("train")[1].wants_gpu and not kfp.profile_for("gate")[1].wants_gpu


# ---- ignored_locally ------------------------------------------------------------------------

def test_ignored_locally_lists_everything_a_gpu_profile_asks_for(params_path):
    h100 = load_params(params_path).kfp.profiles["gpu-h100"]
    assert ignored_locally(h100) == [
        "cpu 16/24",
        "memory 128Gi/200Gi",
        "accelerator 1x nvidia.com/gpu",
        "node selector nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3",
        "tolerations nvidia.com/gpu",
        "/dev/shm 32Gi",
    ]


def test_ignored_locally_for_a_cpu_profile_has_no_gpu_settings(params_path):
    small = load_params(params_path).kfp.profiles["cpu-small"]
    assert ignored_locally(small) == ["cpu 500m/1", "memory 1Gi/2Gi"]


def test_ignored_locally_with_partial_and_empty_profiles():
    assert ignored_locally(Profile()) == []
    assert ignored_locally(Profile(cpu_limit="2", memory_request="3Gi")) == ["cpu 2",
                                                                            "memory 3Gi"]
    two = Profile(accelerator_type="amd.com/gpu", accelerator_count=2,
                  node_selector={"pool": "gpu", "zone": "a"},
                  tolerations=[Toleration(key="gpu"), Toleration(key="spot", operator="Equal",
                                                                 value="true")])
    assert ignored_locally(two) == ["accelerator 2x amd.com/gpu", "node selector pool=gpu, zone=a",
                                    "tolerations gpu, spot"]


def test_task_names_a_profile_can_name_are_the_pipelines_tasks():
    """kfp.task_profiles is checked against config.TASKS: those must be exactly the stages
    the pipelines run, or a valid name would be refused."""
    from components.stages import PIPELINE_STAGES

    assert set(TASKS) == {key for keys in PIPELINE_STAGES.values() for key in keys}
