"""The pipelines' parameter defaults carry params.yaml unchanged (pipelines.training).

A kfp parameter cannot hold null, so ``pipeline_defaults`` drops null settings; each task
re-validates its section, and a dropped key comes back as the field's default. That is only
right when the default is null too: a setting whose "off" was null would silently turn back
on in a pipeline run (``train.checkpoint_dir`` did). So every section, rebuilt the way the
tasks rebuild it, must equal the section of the settings it came from.
"""

from __future__ import annotations

import pytest

from components.config import SECTIONS, dataset_spec, load_params, section
from pipelines.training import pipeline_defaults

VARIANTS = {
    "defaults": [],
    "checkpoints off (null)": ["train.checkpoint_dir=null"],
    "checkpoints off (empty)": ['train.checkpoint_dir=""'],
    "torch, checkpoints off": ["train.framework=torch", "train.estimator=mlp",
                               "train.checkpoint_dir=null"],
    "file dataset": ["dataset=auto_mpg"],
    "cifar10, a row limit": ["dataset=cifar10", "datasets.cifar10.max_rows=500"],
}


@pytest.fixture(params=list(VARIANTS))
def params(request, repo):
    return load_params(repo / "params.yaml", VARIANTS[request.param])


def test_every_section_survives_the_pipeline_defaults(params):
    defaults = pipeline_defaults(params)
    for name, model in SECTIONS.items():
        own = getattr(params, "validate_" if name == "validate" else name)
        assert isinstance(own, model)
        assert section(name, defaults[name]) == own, name
    assert dataset_spec(defaults["dataset"]) == params.dataset_spec


@pytest.mark.parametrize("value", ["null", '""'])
def test_checkpoints_off_stays_off_in_the_pipeline(repo, value):
    params = load_params(repo / "params.yaml", [f"train.checkpoint_dir={value}"])
    assert params.train.checkpoint_dir == ""
    train = pipeline_defaults(params)["train"]
    assert train["checkpoint_dir"] == ""  # kept: a kfp parameter can hold ""
    assert section("train", train).checkpoint_dir == ""


def test_checkpoints_default_to_a_folder(repo):
    params = load_params(repo / "params.yaml", ["train.checkpoint_dir=null"])
    assert load_params(repo / "params.yaml").train.checkpoint_dir == "build/checkpoints"
    assert section("train", {}).checkpoint_dir == "build/checkpoints"
    assert params.train.checkpoint_dir == ""
