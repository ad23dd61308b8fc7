"""``python -m pipelines`` (also ``slipway``): compile pipelines, or run one locally.

    python -m pipelines run training [--set train.estimator=svm]
    python -m pipelines run training --export models/current --metrics reports/metrics.json
    python -m pipelines compile [--out-dir build/pipelines]
    python -m pipelines list
    python -m pipelines upload | submit | schedule | runs | trigger   (pipelines/kfp_cli.py)

Exit status: 0 success, 1 a task failed, 2 bad settings or input, 3 the gate rejected
the model (it was not packaged).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from components import stages
from components.config import Params, load_params
from components.errors import SlipwayError
from pipelines import PIPELINES


def build_pipeline(name: str, params: Params):
    if name not in PIPELINES:
        from components.errors import did_you_mean

        raise SlipwayError(f"unknown pipeline {name!r}", did_you_mean(name, PIPELINES))
    return importlib.import_module(PIPELINES[name]).build(params)


def compile_all(params: Params, out_dir: str | Path, names: list[str] | None = None) -> list[Path]:
    """Compile pipelines to KFP IR YAML; returns the files written."""
    from kfp import compiler

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or list(PIPELINES):
        path = out_dir / f"{name}.yaml"
        compiler.Compiler().compile(build_pipeline(name, params), str(path))
        written.append(path)
    return written


def _check_trainers(params: Params, pipeline: str) -> None:
    """``train`` (and, for tuning, every trial of the search space) names a model and
    settings its backend knows, for the dataset's task.

    Building the trainer is what the train task does first; doing it here turns a mistyped
    estimator or hyperparameter into exit status 2 before ingest starts, instead of a
    failed task minutes later.
    """
    from components.ingest import image_shape
    from components.trainers import get_trainer
    from components.tune import generate_trials

    spec, train = params.dataset_spec, params.train
    try:
        get_trainer(train.framework, spec.task, train.estimator,
                    train.chosen_hyperparameters(), train.seed, image_shape=image_shape(spec))
    except SlipwayError as err:
        raise SlipwayError(f"train: {err.message}", err.fix) from None
    if pipeline != "tuning":
        return
    for trial in generate_trials(params.tune, train):
        try:
            get_trainer(trial["framework"], spec.task, trial["estimator"],
                        trial["hyperparameters"], train.seed, image_shape=image_shape(spec))
        except SlipwayError as err:
            raise SlipwayError(
                f"tune.search_space: {trial['framework']}/{trial['estimator']}: {err.message}",
                f"correct that candidate in tune.search_space in params.yaml ({err.fix})",
            ) from None


def _preflight(params: Params, pipeline: str) -> None:
    """Fail before starting any task when the data file is not there, or the model to train
    (for tuning: a trial) names a model or setting its backend does not have, or several
    nodes are asked of a local run."""
    from pipelines.trainjob import refuse_local_run

    refuse_local_run(params)
    _check_trainers(params, pipeline)
    path = getattr(params.dataset_spec, "path", None)
    # data tracked by DVC but not here: the ingest task fetches it from the DVC remote
    if path and not Path(path).exists() and not Path(f"{path}.dvc").is_file():
        hint = (f"run `dvc pull {path}.dvc` to fetch it from the DVC remote"
                if Path(f"{path}.dvc").is_file() else "correct the dataset's `path`")
        raise SlipwayError(f"data file {path} for dataset {params.dataset!r} not found", hint)


def _shown(path: str | Path) -> str:
    """A path relative to the working directory when it lies below it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _print_summary(result, out=sys.stdout) -> None:
    s = result.summary
    w = out.write
    w(f"\n{'=' * 72}\n")
    status = "succeeded" if result.ok else "FAILED"
    w(f"pipeline {result.pipeline} {status} in {result.seconds:.1f} s\n")
    if ds := s.get("dataset"):
        # int(): metadata served from kfp.local's cache went through a protobuf Struct.
        w(f"  dataset        {ds['name']} ({ds['source']}), {int(ds['rows'])} rows, "
          f"md5 {ds['md5']}\n")
    if m := s.get("model"):
        w(f"  model          {m.get('framework')}/{m.get('estimator')} on {m.get('device')}\n")
    if best := s.get("best_trial"):
        w(f"  best trial     {int(best['trial'])}: {best['framework']}/{best['estimator']}, "
          f"validation {best['val_score']:.4f} (all trials: see the report)\n")
    if metrics := s.get("metrics"):
        w("  test metrics   " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + "\n")
    if gate := s.get("gate"):
        w(f"  gate           {'passed' if gate['passed'] else 'REJECTED'}: {gate['reason']}\n")
    if v := s.get("model_version"):
        w(f"  model version  {v['version']}\n")
        if "bentoml_tag" in v:
            w(f"  BentoML model  {v['bentoml_tag']}\n")
        if pointer := v.get("dvc"):
            w(f"  DVC remote     pushed, md5 {pointer['md5']} ({int(pointer['nfiles'])} files)\n")
        w(f"  files          {_shown(v['path'])}\n")
    if report := s.get("report"):
        w(f"  report         {_shown(report)}\n")
    if said := s.get("run_metrics"):  # the exit task's, when a Pushgateway was compiled in
        w(f"  run metrics    {said}\n")
    if result.failed_tasks:
        w(f"  failed task    {', '.join(result.failed_tasks)} (its error is above)\n")
    w(f"  full log       {_shown(result.log)}\n")


def local_gpu_count() -> int:
    """CUDA devices this machine has (0 without torch or without a GPU)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _print_local_notes(params: Params, task_keys, runner: str = "subprocess") -> None:
    """Say which cluster settings kfp.local will not apply, task by task."""
    from pipelines import profiles

    print("Cluster settings this local run does not apply:")
    images = "" if runner == "containers" else "its role's image (--runner containers uses it), "
    print(f"  every task   {images}display name, caching options")
    gpus = None
    for key in task_keys:
        name, profile = params.kfp.profile_for(key)
        ignored = profiles.ignored_locally(profile)
        print(f"  {key:12} profile {name}" + (f": {', '.join(ignored)}" if ignored else ""))
        if profile.wants_gpu:
            gpus = local_gpu_count() if gpus is None else gpus
            if gpus == 0:
                print(f"  warning: task {key!r} asks for {profile.accelerator_count}x "
                      f"{profile.accelerator_type} (profile {name}) but this machine has no "
                      "GPU: it runs on the CPU", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines import local

    params = load_params(args.params, args.set)
    pipeline = build_pipeline(args.pipeline, params)
    _preflight(params, args.pipeline)
    repo = str(Path.cwd())
    spec = params.dataset_spec
    kind = "DockerRunner on podman" if args.runner == "containers" else "SubprocessRunner"
    print(f"Running pipeline {args.pipeline!r} locally (kfp.local {kind}): dataset "
          f"{params.dataset!r} ({spec.task}), {params.train.framework}/{params.train.estimator}")
    _print_local_notes(params, stages.PIPELINE_STAGES[args.pipeline], args.runner)
    arguments = local.arguments(params, repo, repo, dvc_remote=True)
    if args.trigger:
        arguments["trigger"] = _trigger_parameter(args.trigger)
    result = local.run(pipeline, params, arguments, cache=args.cache,
                       runner=args.runner)
    _print_summary(result)
    if args.cache:
        print(f"  cache          {len(result.summary['executed'])} task(s) executed, "
              f"{len(result.summary['reused'])} reused from earlier runs (CACHE=0: none)")
    if not result.ok:
        return 1
    gate = result.summary.get("gate", {})
    if not gate.get("passed", True):
        return 3
    if args.export:
        _export(result.summary, args.export, args.metrics)
    return 0


def _export(summary: dict, version_dir: Path, metrics: Path | None) -> None:
    """Copy the packaged model version (and its test metrics) out of the pipeline root,
    for DVC to cache and version (dvc.yaml's stage); written only after a passed gate,
    each file atomically."""
    import shutil

    from components.io import atomic_dir, write_json

    version = summary.get("model_version")
    if not version:
        raise SlipwayError("the run packaged no model version to export",
                           "check the run's summary above")
    with atomic_dir(version_dir) as tmp:
        shutil.copytree(version["path"], tmp, dirs_exist_ok=True)
    if metrics:
        write_json(metrics, summary.get("metrics", {}))
    print(f"  exported       {_shown(version_dir)}" + (f", {_shown(metrics)}" if metrics else ""))


def _trigger_parameter(path: Path) -> str:
    """The alert a run was started for (a JSON file, from ``slipway trigger``) as the
    pipeline's ``trigger`` parameter."""
    import json

    from components.config import to_parameter

    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SlipwayError(f"--trigger {path}: not a readable JSON file ({err})",
                           "pass the alert record that slipway trigger wrote") from None
    if not isinstance(record, dict):
        raise SlipwayError(f"--trigger {path}: not a JSON object",
                           "pass the alert record that slipway trigger wrote")
    return to_parameter(record)


def cmd_compile(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.set)
    for path in compile_all(params, args.out_dir, args.pipelines or None):
        print(f"compiled {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for name, module in PIPELINES.items():
        doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()[0]
        print(f"{name:12} {doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="settings file")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. train.estimator=svm (repeatable)")
    p_run = sub.add_parser("run", parents=[common], help="run a pipeline locally with kfp.local")
    p_run.add_argument("pipeline", nargs="?", default="training", help="pipeline name")
    p_run.add_argument("--cache", action=argparse.BooleanOptionalAction,
                       default=os.environ.get("SLIPWAY_CACHE", "1") != "0",
                       help="reuse the outputs of tasks whose data (by content hash), settings "
                            "and stage code are unchanged since an earlier local run (default: "
                            "on, or SLIPWAY_CACHE=0 off; --no-cache runs every task)")
    p_run.add_argument("--export", type=Path, metavar="DIR",
                       help="copy the packaged model version to DIR after a passed gate "
                            "(dvc.yaml's stage versions it)")
    p_run.add_argument("--metrics", type=Path, metavar="FILE",
                       help="with --export: write the test metrics to FILE (JSON)")
    p_run.add_argument("--trigger", type=Path, metavar="FILE",
                       help="the alert this run retrains for (JSON, written by slipway trigger); "
                            "recorded in the model version's lineage")
    p_run.add_argument("--runner", choices=("subprocess", "containers"),
                       default=os.environ.get("SLIPWAY_RUNNER", "subprocess"),
                       help="subprocess: tasks in this environment; containers: each task in "
                            "its role's image (podman; `make images` first); default "
                            "SLIPWAY_RUNNER or subprocess")
    p_run.set_defaults(func=cmd_run)
    p_compile = sub.add_parser("compile", parents=[common], help="compile pipelines to IR YAML")
    p_compile.add_argument("pipelines", nargs="*", help="names (default: all)")
    p_compile.add_argument("--out-dir", default="build/pipelines", help="where the YAML goes")
    p_compile.set_defaults(func=cmd_compile)
    sub.add_parser("list", help="list the pipelines").set_defaults(func=cmd_list)
    # upload / submit / schedule / runs / trigger: pipelines/kfp_cli.py
    from pipelines import kfp_cli

    kfp_cli.add_parsers(sub, common)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SlipwayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
