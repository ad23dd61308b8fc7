"""Typed settings: ``params.yaml`` validated once into pydantic models.

Every stage, the DVC CLIs and the kfp pipeline read their settings through
:func:`load_params`. Unknown keys are rejected (a mistyped key must not be silently
ignored) and each error names the dotted key and the valid choices.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from components.errors import SlipwayError, did_you_mean
from components.stages import STAGES

Task = Literal["classification", "regression"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SklearnDataset(_Strict):
    """A dataset bundled with scikit-learn (loads offline)."""

    source: Literal["sklearn"]
    name: Literal["iris", "wine", "breast_cancer", "digits"]

    @property
    def task(self) -> Task:
        return "classification"

    @property
    def target(self) -> str:
        return "target"


class FileDataset(_Strict):
    """A DVC-tracked file under ``data/``."""

    source: Literal["file"]
    path: str
    format: Literal["csv", "whitespace", "parquet"]
    header: bool = True
    target: str
    task: Task
    na_values: list[str] = Field(default_factory=list)
    # name -> numeric | categorical | drop, in file order when header is false.
    columns: dict[str, Literal["numeric", "categorical", "drop"]] | None = None

    @model_validator(mode="after")
    def _check(self) -> FileDataset:
        if not self.header and not self.columns and self.format != "parquet":
            raise ValueError("a file without a header row needs `columns` to name them")
        if self.columns is not None and self.target not in self.columns:
            raise ValueError(
                f"target {self.target!r} is not among `columns` ({', '.join(self.columns)})"
            )
        return self


class Cifar10Dataset(_Strict):
    """CIFAR-10 in its binary format (``data_batch_*.bin``): 32x32 colour images, 10 classes."""

    source: Literal["cifar10"]
    path: str  # the unpacked cifar-10-batches-bin directory (DVC-tracked)
    files: list[str] = Field(default_factory=lambda: ["data_batch_*.bin"])  # globs in `path`
    max_rows: int | None = Field(None, ge=1)  # the first rows only, for a quick run

    @property
    def task(self) -> Task:
        return "classification"

    @property
    def target(self) -> str:
        return "label"


DatasetSpec = Annotated[
    SklearnDataset | FileDataset | Cifar10Dataset, Field(discriminator="source")
]


class ValidateParams(_Strict):
    min_rows: int = Field(20, ge=1)
    max_missing_fraction: float = Field(0.05, ge=0, le=1)
    max_duplicate_fraction: float = Field(0.05, ge=0, le=1)
    min_class_fraction: float = Field(0.02, ge=0, le=1)


class SplitParams(_Strict):
    test_size: float = Field(0.2, gt=0, lt=1)
    val_size: float = Field(0.1, ge=0, lt=1)
    seed: int = 42

    @model_validator(mode="after")
    def _check(self) -> SplitParams:
        if self.test_size + self.val_size >= 1:
            raise ValueError("test_size + val_size must leave rows for training (< 1)")
        return self


class PreprocessParams(_Strict):
    numeric_impute: Literal["mean", "median", "most_frequent"] = "median"
    categorical_impute: Literal["most_frequent"] = "most_frequent"
    scale: Literal["standard", "minmax", "none"] = "standard"


class DistributedParams(_Strict):
    """Data-parallel training of the torch backend (components/trainers/distributed.py).

    One node: ``nproc_per_node`` > 1 makes the train core launch its fit with torchrun, one
    process per GPU (NCCL) or per CPU share (gloo). Several nodes (``nnodes`` > 1) run on a
    cluster only, as a Kubeflow Trainer ``TrainJob`` (components/trainers/trainjob.py); the
    pipeline then asks kfp for a workspace of ``workspace_size`` on ``storage_class`` (a
    ReadWriteMany volume the train task and the job's nodes share).
    """

    nproc_per_node: int | Literal["auto"] = 1  # "auto": one per visible GPU (1 on CPU)
    nnodes: int = Field(1, ge=1)  # > 1: a TrainJob of this many nodes (cluster only)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPUs, gloo on CPU
    runtime: str = "torch-distributed"  # the TrainJob's ClusterTrainingRuntime (nnodes > 1)
    # nnodes > 1 only: the pipeline's workspace (data in, model out) and the job's watcher.
    workspace_size: str = "20Gi"  # a Kubernetes quantity
    storage_class: str = ""       # a ReadWriteMany class (e.g. nfs-client); "" = the default
    poll_s: int = Field(15, ge=1)     # seconds between reads of the TrainJob's status
    timeout_s: int = Field(0, ge=0)   # give up on the TrainJob after this long; 0 = never

    @field_validator("workspace_size")
    @classmethod
    def _quantity(cls, value: str) -> str:
        # kfp's own check (kfp.dsl.pipeline_config), here so a typo fails on load.
        if not re.fullmatch(r"(0|[1-9]\d*)(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|K|M|G|T|P|E)?",
                            str(value).strip()):
            raise ValueError(f"workspace_size {value!r} is not a Kubernetes quantity "
                             "(e.g. 20Gi, 500Mi, 1Ti)")
        return str(value).strip()

    @field_validator("nproc_per_node", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        # kfp parameters pass through protobuf, where every number is a double (2 -> 2.0).
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int)
                                or value < 1):
            raise ValueError(f"nproc_per_node must be a whole number >= 1 or \"auto\", "
                             f"got {value!r}")
        return value

    @field_validator("nnodes", "poll_s", "timeout_s", mode="before")
    @classmethod
    def _whole_nodes(cls, value: Any) -> Any:
        return int(value) if isinstance(value, float) and value.is_integer() else value


class TrainParams(_Strict):
    framework: Literal["sklearn", "torch", "keras"] = "sklearn"
    estimator: str = "random_forest"
    cv_folds: int = Field(5, ge=2)
    seed: int = 42
    hyperparameters: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Per-epoch checkpoints of epoch-based backends (torch, keras), so a killed fit resumes;
    # "" (or null) for none.
    checkpoint_dir: str = "build/checkpoints"
    distributed: DistributedParams = Field(default_factory=DistributedParams)

    @field_validator("checkpoint_dir", mode="before")
    @classmethod
    def _null_is_off(cls, value: Any) -> Any:
        # `checkpoint_dir: null` (or --set train.checkpoint_dir=null) reads as "off" too.
        return "" if value is None else value

    @model_validator(mode="after")
    def _nodes_need_torch(self) -> TrainParams:
        if self.distributed.nnodes > 1 and self.framework != "torch":
            raise ValueError(f"distributed.nnodes is {self.distributed.nnodes}, but several "
                             f"nodes train the torch backend only (framework is "
                             f"{self.framework!r}): set train.framework=torch or "
                             "train.distributed.nnodes=1")
        return self

    def chosen_hyperparameters(self) -> dict[str, Any]:
        return dict(self.hyperparameters.get(self.estimator, {}))


class Candidate(_Strict):
    """One model family of the search space and the values to try for its settings."""

    framework: Literal["sklearn", "torch", "keras"] = "sklearn"
    estimator: str
    hyperparameters: dict[str, list[Any]] = Field(default_factory=dict)


class TuneParams(_Strict):
    method: Literal["grid", "random"] = "random"
    n_trials: int = Field(8, ge=1)  # random search: trials drawn from the grid
    seed: int = 42
    parallelism: int = Field(2, ge=1)  # trials run at once
    search_space: list[Candidate] = Field(default_factory=list)


class GateRule(_Strict):
    metric: str
    threshold: float


class GateParams(_Strict):
    classification: GateRule = GateRule(metric="accuracy", threshold=0.8)
    regression: GateRule = GateRule(metric="r2", threshold=0.7)
    tolerance: float = Field(0.02, ge=0)

    def rule(self, task: Task) -> GateRule:
        return self.classification if task == "classification" else self.regression


class PackageParams(_Strict):
    model_name: str = "{dataset}-{task}"
    bentoml_store: bool = True


class Toleration(_Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class Profile(_Strict):
    """Where and with what a task runs on the cluster (a GPU node pool, say)."""

    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    accelerator_type: str | None = None  # e.g. nvidia.com/gpu
    accelerator_count: int = Field(0, ge=0)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    shm_size: str | None = None  # an in-memory /dev/shm of this size (data loader workers)

    @model_validator(mode="after")
    def _check(self) -> Profile:
        if self.accelerator_count and not self.accelerator_type:
            raise ValueError("accelerator_count needs accelerator_type (e.g. nvidia.com/gpu)")
        return self

    @property
    def wants_gpu(self) -> bool:
        return self.accelerator_count > 0


TASKS = tuple(STAGES)  # what kfp.task_profiles may name


class KfpEndpoint(_Strict):
    """Where ``make upload / submit / schedule`` send pipelines (pipelines/kfp_api.py).

    The environment overrides each: KFP_HOST, KFP_NAMESPACE, KFP_TOKEN (the token itself),
    KFP_TOKEN_FILE, KFP_EXPERIMENT. Without a token, the in-cluster service account token
    is used where there is one.
    """

    host: str = ""                 # e.g. https://kubeflow.example.com/pipeline; "" = not set
    namespace: str = ""            # the Kubeflow profile namespace (multi-user)
    token_file: str = ""           # a file holding the bearer token (re-read per request)
    experiment: str = "slipway"    # runs go to this experiment (created when missing)
    timeout_s: float = Field(10.0, gt=0)


class KfpTrigger(_Strict):
    """The retraining trigger: ``slipway trigger serve`` (pipelines/trigger.py)."""

    target: Literal["local", "kfp"] = "local"   # start a local run, or a run on kfp.endpoint
    pipeline: str = "training"
    cooldown_s: float = Field(3600.0, ge=0)     # per model: no second run within this time
    state_file: str = "build/trigger/state.json"  # alert episodes seen, last run per model
    token_file: str = ""           # the bearer token Alertmanager sends; env SLIPWAY_TRIGGER_TOKEN


class KfpParams(_Strict):
    registry: str = ""  # where a cluster pulls the role images from ("" = local references)
    # A Kubernetes Secret holding the object-store remote's credentials (its keys named as
    # the environment variables DVC reads, e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY),
    # given to the tasks that use the DVC remote on a cluster; "" for none.
    remote_secret: str = ""
    remote_secret_keys: list[str] = Field(
        default_factory=lambda: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
    pipeline_root: str = "build/kfp-local"
    default_profile: str = "cpu-small"
    task_profiles: dict[str, str] = Field(default_factory=dict)
    profiles: dict[str, Profile] = Field(default_factory=lambda: {"cpu-small": Profile()})
    endpoint: KfpEndpoint = Field(default_factory=KfpEndpoint)
    trigger: KfpTrigger = Field(default_factory=KfpTrigger)

    @model_validator(mode="after")
    def _check(self) -> KfpParams:
        for task, name in [("(default)", self.default_profile), *self.task_profiles.items()]:
            if name not in self.profiles:
                raise ValueError(
                    f"task {task}: unknown profile {name!r}: " + did_you_mean(name, self.profiles)
                )
        unknown = sorted(set(self.task_profiles) - set(TASKS))
        if unknown:
            raise ValueError(
                f"task_profiles: unknown task {unknown[0]!r}: " + did_you_mean(unknown[0], TASKS)
            )
        return self

    def profile_for(self, task: str) -> tuple[str, Profile]:
        name = self.task_profiles.get(task, self.default_profile)
        return name, self.profiles[name]


class MonitoringParams(_Strict):
    """Where pipeline runs push their metrics (pipelines/run_metrics.py).

    ``pushgateway``: a Prometheus Pushgateway URL (``http://host:9091``); null: no push.
    The environment variable ``SLIPWAY_PUSHGATEWAY`` overrides it.
    """

    pushgateway: str | None = None

    @field_validator("pushgateway")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL: write it as "
                             "http://<host>:9091, or null for no push")
        return value or None


class Params(_Strict):
    dataset: str
    datasets: dict[str, DatasetSpec]
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    split: SplitParams = Field(default_factory=SplitParams)
    preprocess: PreprocessParams = Field(default_factory=PreprocessParams)
    train: TrainParams = Field(default_factory=TrainParams)
    gate: GateParams = Field(default_factory=GateParams)
    package: PackageParams = Field(default_factory=PackageParams)
    tune: TuneParams = Field(default_factory=TuneParams)
    kfp: KfpParams = Field(default_factory=KfpParams)
    monitoring: MonitoringParams = Field(default_factory=MonitoringParams)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> Params:
        if self.dataset not in self.datasets:
            raise ValueError(
                f"dataset {self.dataset!r} is not declared under `datasets`: "
                + did_you_mean(self.dataset, self.datasets)
            )
        return self

    @property
    def dataset_spec(self) -> SklearnDataset | FileDataset | Cifar10Dataset:
        return self.datasets[self.dataset]

    def model_name(self) -> str:
        return self.package.model_name.format(
            dataset=self.dataset, task=self.dataset_spec.task
        ).replace("_", "-")


# Models for each section, used to re-validate a section passed to a kfp component.
SECTIONS: dict[str, type[BaseModel]] = {
    "validate": ValidateParams,
    "split": SplitParams,
    "preprocess": PreprocessParams,
    "train": TrainParams,
    "gate": GateParams,
    "package": PackageParams,
    "tune": TuneParams,
    "kfp": KfpParams,
}


def _format_validation_error(err: ValidationError, source: str, raw: dict) -> SlipwayError:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not str(p).startswith(("function-after", "tagged"))]
        # Drop discriminator tags such as 'file' that pydantic inserts into the location.
        loc = ([p for p in loc if p not in ("sklearn", "file", "cifar10")]
               if "datasets" in loc else loc)
        key = ".".join(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1])
            hint = did_you_mean(loc[-1], known) if known else ""
            lines.append(f"{key}: unknown key" + (f" ({hint})" if hint else ""))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}")
    return SlipwayError(
        f"invalid settings in {source}:\n  " + "\n  ".join(lines),
        f"correct these keys in {source} (every setting is documented in params.yaml)",
    )


def _known_keys(loc: list[str]) -> list[str]:
    """The valid keys of the section at ``loc`` (for 'did you mean')."""
    model: type[BaseModel] = Params
    for i, part in enumerate(loc):
        if model is Params and part == "datasets":
            if len(loc) == i + 2:  # datasets.<name>.<key>
                return sorted(set(FileDataset.model_fields) | set(SklearnDataset.model_fields)
                              | set(Cifar10Dataset.model_fields))
            return []
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        ann = fields[part].annotation if part in fields else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return [f.alias or n for n, f in model.model_fields.items()]


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["train.estimator=svm", "split.seed=1"]`` into a nested dict (YAML values)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise SlipwayError(
                f"override {item!r} is not of the form key=value",
                "write it like train.estimator=svm",
            )
        key, value = item.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SlipwayError(
                    f"override {item!r} conflicts with an earlier override that set "
                    f"{'.'.join(parts[: i + 1])!r} to a value",
                    "override either the whole section or keys inside it, not both",
                )
        node[parts[-1]] = yaml.safe_load(value)
    return nested


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def params_from_dict(raw: dict, source: str = "params") -> Params:
    """Validate a params mapping; errors name the key."""
    if not isinstance(raw, dict):
        raise SlipwayError(f"{source} must be a mapping of sections", "see params.yaml")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise _format_validation_error(err, source, raw) from None


def load_params(
    path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()
) -> Params:
    """Read and validate ``params.yaml``, applying ``key=value`` overrides first.

    Args:
        path: the params file.
        overrides: dotted ``key=value`` strings, as ``dvc exp run -S`` takes them.

    Returns:
        The validated settings.

    Raises:
        SlipwayError: the file is missing, is not YAML, or has a bad or unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise SlipwayError(
            f"settings file {path} not found", "run from the repository root or pass --params"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SlipwayError(f"{path} is not valid YAML: {err}", "fix the YAML syntax") from None
    raw = _merge(raw, parse_overrides(overrides))
    return params_from_dict(raw, str(path))


# ---- settings as kfp parameters ----------------------------------------------------------
# A kfp `dict` parameter travels as a protobuf Struct, which sorts its keys (a file's column
# order), cannot hold null, and makes every number a double (`epochs: 30` arrives as 30.0,
# which scikit-learn reads as a fraction where it takes both). So each section travels as
# its JSON text and is decoded once, here: a stage gets it exactly as params.yaml wrote it.


def to_parameter(value: BaseModel | dict | list) -> str:
    """A section (or any JSON value) as a kfp parameter: its JSON text, order kept."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    return json.dumps(value, separators=(",", ":"))


def from_parameter(text: str | dict | list) -> Any:
    """The value :func:`to_parameter` encoded (a dict or list given as such passes through)."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError as err:
        raise SlipwayError(f"a settings parameter is not JSON ({err}): {text[:80]!r}",
                           "pass the section's JSON text, e.g. as `make compile` writes it "
                           "into the pipeline's parameter defaults") from None


def section(name: str, raw: str | dict) -> Any:
    """Validate one section (its JSON text, as passed to a kfp component) into its model."""
    raw = from_parameter(raw)
    try:
        return SECTIONS[name].model_validate(raw)
    except ValidationError as err:
        raise _format_validation_error(err, f"section {name!r}", raw) from None


def dataset_spec(raw: str | dict) -> SklearnDataset | FileDataset | Cifar10Dataset:
    """Validate one ``datasets`` entry (as passed to the ingest component)."""
    from pydantic import TypeAdapter

    raw = from_parameter(raw)
    try:
        return TypeAdapter(DatasetSpec).validate_python(raw)
    except ValidationError as err:
        raise _format_validation_error(err, "dataset", raw) from None
