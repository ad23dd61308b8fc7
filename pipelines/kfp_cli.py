"""The ``upload``, ``submit``, ``schedule``, ``runs`` and ``trigger`` subcommands of
``python -m pipelines`` (also ``slipway``; ``make upload`` etc.).

    python -m pipelines upload [training] [--set key=value] [--spec build/pipelines/x.yaml]
    python -m pipelines submit [training] [--set key=value] [--experiment E] [--wait]
    python -m pipelines schedule create nightly --cron "0 0 3 * * *" [--max-concurrency 1]
    python -m pipelines schedule list | delete nightly
    python -m pipelines runs [--limit 20] [--local-only]
    python -m pipelines trigger serve [--host 127.0.0.1] [--port 9095]

Exit status: 0 done, 1 a run waited for did not succeed, 2 bad settings or input (the
message names the problem and the fix), as for ``run`` and ``compile``.
"""

from __future__ import annotations

import argparse
import sys

from components.config import load_params


def _session(args: argparse.Namespace):
    from pipelines import kfp_api

    return kfp_api.connect(load_params(args.params, args.set))


def cmd_upload(args: argparse.Namespace) -> int:
    from components.package import git_commit
    from pipelines import kfp_api

    params = load_params(args.params, args.set)
    if args.spec:
        spec = kfp_api.load_spec(args.spec, args.pipeline)
    else:
        spec = kfp_api.compile_spec(params, args.pipeline, args.out_dir)
    session = kfp_api.connect(params)
    version = kfp_api.ensure_version(session, spec, git_commit("."))
    print(f"  pipeline id {version.pipeline_id}, version id {version.version_id}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines import kfp_api

    params = load_params(args.params, args.set)
    base = load_params(args.params) if args.set else params
    session = kfp_api.connect(params)
    done = kfp_api.submit(session, params, args.pipeline, args.set, args.experiment,
                          args.run_name, base_params=base, out_dir=args.out_dir)
    if not args.wait:
        return 0
    print(f"waiting for run {done.run_id} (every {args.poll:g} s, at most {args.timeout:g} s)")
    state = kfp_api.wait(session, done.run_id, args.timeout, args.poll)
    print(f"run {done.run_id} ended {state}: {done.url}")
    return 0 if state == "SUCCEEDED" else 1


def cmd_schedule(args: argparse.Namespace) -> int:
    from components.package import git_commit
    from pipelines import kfp_api

    params = load_params(args.params, args.set)
    experiment = args.experiment or None
    if args.action == "create":
        if not args.name or not args.cron:
            from components.errors import SlipwayError

            raise SlipwayError("schedule create needs a name and --cron",
                               'e.g. make schedule NAME=nightly CRON="0 0 3 * * *"')
        # Everything that can be refused is checked before anything is sent.
        want = kfp_api.Schedule(args.name, args.cron, args.max_concurrency,
                                no_catchup=not args.catchup, enabled=not args.disabled)
        base_params = load_params(args.params) if args.set else params
        base = kfp_api.compile_spec(base_params, args.pipeline, args.out_dir)
        if args.set:
            overridden = kfp_api.compile_spec(params, args.pipeline, f"{args.out_dir}/overridden")
            want.parameters = kfp_api.run_parameters(base, overridden, args.set)
        session = kfp_api.connect(params)
        version = kfp_api.ensure_version(session, base, git_commit("."))
        kfp_api.schedule(session, want, version, experiment or session.endpoint.experiment)
        return 0
    session = kfp_api.connect(params)
    experiment = experiment or session.endpoint.experiment
    if args.action == "delete":
        if not args.name:
            from components.errors import SlipwayError

            raise SlipwayError("schedule delete needs the schedule's name",
                               "e.g. make schedule ACTION=delete NAME=nightly")
        count = kfp_api.delete_schedule(session, args.name, experiment)
        print(f"schedule {args.name}: deleted ({count} recurring run"
              f"{'s' if count > 1 else ''})")
        return 0
    rows = kfp_api.list_schedules(session, experiment)
    if not rows:
        print(f"no schedules in experiment {experiment}")
        return 0
    print(f"{'name':20} {'cron':18} {'status':9} {'max':>3} {'catch-up':8} created")
    for r in rows:
        cron = r.trigger.cron_schedule.cron if r.trigger and r.trigger.cron_schedule else "-"
        print(f"{r.display_name:20} {cron:18} {str(r.status or r.mode):9} "
              f"{str(r.max_concurrency):>3} {'no' if r.no_catchup else 'yes':8} "
              f"{r.created_at}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from components.errors import SlipwayError
    from pipelines import kfp_api, runs

    params = load_params(args.params, args.set)
    rows = runs.local_rows(params.kfp.pipeline_root, args.limit)
    note = ""
    if not args.local_only:
        try:
            endpoint = kfp_api.resolve_endpoint(params)
        except SlipwayError:
            note = ("remote runs: no KFP endpoint configured (kfp.endpoint.host or "
                    f"{kfp_api.ENV_HOST})")
        else:
            try:
                session = kfp_api.connect(params)
                rows += runs.remote_rows(session, args.experiment, args.limit)
            except SlipwayError as err:
                note = f"remote runs from {endpoint.host} not shown: {err}"
    runs.render(rows)
    if note:
        print(note)
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    from pipelines import trigger

    params = load_params(args.params, args.set)
    trigger.serve(params, args.params, args.host, args.port)
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register the KFP endpoint subcommands on ``python -m pipelines``' parser."""
    remote = argparse.ArgumentParser(add_help=False, parents=[common])
    remote.add_argument("--out-dir", default="build/pipelines", help="where compiled YAML goes")

    p = sub.add_parser("upload", parents=[remote],
                       help="upload a pipeline version to the KFP endpoint (idempotent)")
    p.add_argument("pipeline", nargs="?", default="training")
    p.add_argument("--spec", help="upload this compiled file instead of compiling")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("submit", parents=[remote],
                       help="start a run on the KFP endpoint (SET overrides are run parameters)")
    p.add_argument("pipeline", nargs="?", default="training")
    p.add_argument("--experiment", help="experiment name (get or create); "
                                        "default kfp.endpoint.experiment")
    p.add_argument("--run-name", help="the run's name (default: pipeline and version)")
    p.add_argument("--wait", action="store_true", help="wait for the run, showing progress")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait at most")
    p.add_argument("--poll", type=float, default=10, help="seconds between checks")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("schedule", parents=[remote],
                       help="create/replace, list or delete a recurring run on the KFP endpoint")
    p.add_argument("action", choices=["create", "list", "delete"])
    p.add_argument("name", nargs="?", help="the schedule's name (create, delete)")
    p.add_argument("--pipeline", default="training")
    p.add_argument("--cron", help='6 fields, seconds first: "0 0 3 * * *" = daily at 03:00')
    p.add_argument("--max-concurrency", type=int, default=1, help="runs at once (1-10)")
    p.add_argument("--catchup", action="store_true",
                   help="run missed intervals after a pause (default: no catch-up)")
    p.add_argument("--disabled", action="store_true", help="create it paused")
    p.add_argument("--experiment", help="default kfp.endpoint.experiment")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("runs", parents=[common],
                       help="recent local and KFP runs side by side (params, metrics, gate)")
    p.add_argument("--limit", type=int, default=20, help="runs of each kind")
    p.add_argument("--local-only", action="store_true", help="do not ask the KFP endpoint")
    p.add_argument("--experiment", help="only this experiment's remote runs")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("trigger", parents=[common],
                       help="the retraining trigger: receive Alertmanager's webhook")
    p.add_argument("action", choices=["serve"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9095)
    p.set_defaults(func=cmd_trigger)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - `python -m pipelines`
    from pipelines.cli import main as cli_main

    return cli_main(argv if argv is not None else sys.argv[1:])
