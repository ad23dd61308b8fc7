"""Upload, submit and schedule against a KFP endpoint: the real ``kfp.Client`` (kfp 2.17.0)
talking HTTP to a local fake of the KFP v2beta1 REST API (``tests/fakes/kfp_api.py``).

No KFP backend can run here (it needs a Kubernetes API server, Argo Workflows and a
database), so the endpoint is a fake. It checks every request against the API's published
swagger document, parses every uploaded pipeline with kfp's own protobuf schemas
(``ignore_unknown_fields=False``) and refuses what the real API server refuses (duplicate
names, a missing namespace in multi-user mode, a wrong token, an unreadable cron). The
pipelines are compiled for real, as ``make compile`` does.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import kfp
import kfp_server_api
import pytest
import yaml

from components.config import from_parameter, load_params
from components.errors import SlipwayError
from pipelines import cli, kfp_api
from tests.fakes.kfp_api import FakeKfp, robfig_parse

REPO = Path(__file__).resolve().parents[2]
COMMIT = {"commit": "0123456789abcdef0123", "dirty": False}
NS = "team-a"


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="module")
def compiled(params, tmp_path_factory):
    """The training pipeline compiled once, as `make compile` compiles it."""
    return kfp_api.compile_spec(params, "training", tmp_path_factory.mktemp("compiled"))


@pytest.fixture
def fake():
    with FakeKfp(tokens={"t0ken": {NS}, "other": {"team-b"}}, multi_user=True) as server:
        yield server
    assert server.violations == [], "a request broke the published API contract"


@pytest.fixture
def env(fake):
    return {"KFP_HOST": fake.url, "KFP_TOKEN": "t0ken", "KFP_NAMESPACE": NS}


@pytest.fixture
def session(params, env):
    return kfp_api.connect(params, env=env, in_cluster_token="/nonexistent")


@pytest.fixture
def cli_env(monkeypatch, env, tmp_path):
    """The CLI reads the endpoint from the environment; compiled files go to tmp_path."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)
    return ["--out-dir", str(tmp_path / "pipelines")]


# ---- upload ---------------------------------------------------------------------------------


def test_upload_creates_pipeline_and_a_version_named_by_commit_and_spec_hash(
        session, compiled, fake, capsys):
    version = kfp_api.ensure_version(session, compiled, COMMIT)
    assert version.created
    assert version.name == f"training-01234567-{compiled.sha256[:12]}"
    (pipeline,) = fake.pipelines.values()
    assert pipeline["display_name"] == "training" and pipeline["namespace"] == NS
    (stored,) = fake.versions.values()
    assert stored["name"] == version.name
    spec = stored["pipeline_spec"]  # {pipeline_spec, platform_spec} with kfp-kubernetes settings
    assert spec.get("pipeline_spec", spec)["pipelineInfo"]["name"] == "training"
    assert "first version" in stored["description"] and "commit 0123456789ab" in \
        stored["description"]


def test_uploading_the_same_spec_twice_is_a_no_op(session, compiled, fake, capsys):
    first = kfp_api.ensure_version(session, compiled, COMMIT)
    uploads = sum(op == "UploadPipelineVersion" for op, *_ in fake.requests)
    again = kfp_api.ensure_version(session, compiled, {"commit": "fedcba987654", "dirty": True})
    assert not again.created and again.version_id == first.version_id
    assert sum(op == "UploadPipelineVersion" for op, *_ in fake.requests) == uploads
    assert len(fake.versions) == 1
    assert "nothing to do" in capsys.readouterr().out


def test_a_changed_spec_is_a_new_version_whose_description_says_what_changed(
        session, compiled, params, fake, tmp_path):
    kfp_api.ensure_version(session, compiled, COMMIT)
    changed = kfp_api.compile_spec(load_params(REPO / "params.yaml", ["gate.tolerance=0.05"]),
                                   "training", tmp_path)
    version = kfp_api.ensure_version(session, changed, COMMIT)
    assert version.created and len(fake.versions) == 2
    assert "parameter defaults: gate" in version.description
    assert f"changed since training-01234567-{compiled.sha256[:12]}" in version.description


def test_a_version_uploaded_meanwhile_409_is_taken_as_the_same(session, compiled, fake):
    """Another client uploads the same version between our look-up and our upload: the
    API answers 409 and the upload takes that version."""
    def upload_first(server, query, body):
        if not any(v["name"] == query["name"] for v in server.versions.values()):
            server._new_version(query["pipelineid"], query["name"], "by someone else", {})

    fake.hooks["UploadPipelineVersion"] = upload_first
    version = kfp_api.ensure_version(session, compiled, COMMIT)
    assert not version.created
    assert version.description == "by someone else" and len(fake.versions) == 1


def test_the_fake_parses_uploads_with_kfps_protobuf_schemas(session, compiled, fake, tmp_path):
    """A spec with a field the PipelineSpec proto does not have is refused (400)."""
    docs = list(yaml.safe_load_all(compiled.path.read_text()))
    docs[0]["root"]["dag"]["tasks"]["train-op"]["cachingOptions"]["enableCache2"] = True
    bad = tmp_path / "training.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(SlipwayError, match=r"invalid pipeline spec.*enableCache2"):
        kfp_api.ensure_version(session, kfp_api.load_spec(bad, "training"), COMMIT)
    assert fake.versions == {}


def test_a_spec_compiled_for_another_pipeline_is_refused_before_sending(
        cli_env, compiled, fake, capsys):
    code = cli.main(["upload", "tuning", "--spec", str(compiled.path), *cli_env])
    assert code == 2
    assert "was compiled for pipeline 'training', not 'tuning'" in capsys.readouterr().err
    assert fake.requests == []


def test_an_unknown_pipeline_is_refused_with_a_suggestion(cli_env, fake, capsys):
    assert cli.main(["upload", "trainig", *cli_env]) == 2
    assert "unknown pipeline 'trainig'" in capsys.readouterr().err
    assert fake.requests == []


def test_cli_upload_twice(cli_env, fake, capsys):
    assert cli.main(["upload", *cli_env]) == 0
    assert cli.main(["upload", *cli_env]) == 0
    out = capsys.readouterr().out
    assert "uploaded version training-" in out and "nothing to do" in out
    assert len(fake.versions) == 1


# ---- credentials, namespace, reachability ---------------------------------------------------


def test_a_wrong_token_is_a_clear_401(params, env, fake):
    with pytest.raises(SlipwayError, match=r"refused the token \(401 Unauthorized; credential: "
                                           r"\$KFP_TOKEN\)") as err:
        kfp_api.connect(params, env={**env, "KFP_TOKEN": "wrong"},
                        in_cluster_token="/nonexistent")
    assert "KFP_TOKEN_FILE" in err.value.fix
    assert fake.pipelines == {} and fake.experiments == {}


def test_no_token_at_all_is_a_401_too(params, env, fake):
    without = {k: v for k, v in env.items() if k != "KFP_TOKEN"}
    with pytest.raises(SlipwayError, match="401"):
        kfp_api.connect(params, env=without, in_cluster_token="/nonexistent")


def test_a_forbidden_namespace_is_a_clear_403(params, env, fake, compiled):
    session = kfp_api.connect(params, env={**env, "KFP_NAMESPACE": "team-b"},
                              in_cluster_token="/nonexistent")
    with pytest.raises(SlipwayError, match=r"namespace 'team-b' is forbidden.*403") as err:
        kfp_api.ensure_version(session, compiled, COMMIT)
    assert "contributor" in err.value.fix
    assert fake.pipelines == {}


def test_multi_user_without_a_namespace_is_refused_before_anything_is_created(
        params, env, fake):
    with pytest.raises(SlipwayError, match="multi-user mode and no namespace") as err:
        kfp_api.connect(params, env={k: v for k, v in env.items() if k != "KFP_NAMESPACE"},
                        in_cluster_token="/nonexistent")
    assert "KFP_NAMESPACE" in err.value.fix
    assert [op for op, *_ in fake.requests] == ["HealthzService_GetHealthz"]


def test_the_fake_refuses_a_missing_namespace_in_multi_user_mode(fake):
    client = kfp.Client(host=fake.url, existing_token="t0ken", namespace=NS)
    with pytest.raises(kfp_server_api.ApiException) as err:
        client._experiment_api.experiment_service_create_experiment(
            experiment=kfp_server_api.V2beta1Experiment(display_name="x"))
    assert err.value.status == 400 and "empty namespace in multi-user mode" in err.value.body


def test_an_unreachable_endpoint_is_a_clear_error_at_once(params):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SlipwayError, match=r"KFP endpoint http://127.0.0.1:\d+ is unreachable"):
        kfp_api.connect(params, env={"KFP_HOST": f"http://127.0.0.1:{port}", "KFP_TOKEN": "x"})
    assert time.monotonic() - started < 5  # not kfp.Client's 5 x 5 s of retries


def test_no_endpoint_and_a_host_without_scheme_are_named(params):
    with pytest.raises(SlipwayError, match="no KFP endpoint is configured"):
        kfp_api.resolve_endpoint(params, env={})
    with pytest.raises(SlipwayError, match="has no scheme"):
        kfp_api.resolve_endpoint(params, env={"KFP_HOST": "kubeflow.example.com"})


def test_token_from_a_file_and_from_the_in_cluster_service_account(params, fake, tmp_path):
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    env = {"KFP_HOST": fake.url, "KFP_NAMESPACE": NS}
    by_file = kfp_api.connect(params, env={**env, "KFP_TOKEN_FILE": str(token)},
                              in_cluster_token="/nonexistent")
    assert by_file.endpoint.credential == f"token file {token}"
    assert kfp_api.find_experiment(by_file, "none") is None  # an authenticated call
    in_cluster = kfp_api.connect(params, env=env, in_cluster_token=str(token))
    assert in_cluster.endpoint.credential.startswith("in-cluster service account token")
    assert kfp_api.find_experiment(in_cluster, "none") is None
    token.write_text("")
    with pytest.raises(SlipwayError, match="token file .* is empty"):
        kfp_api.resolve_endpoint(params, env={**env, "KFP_TOKEN_FILE": str(token)})


# ---- submit -------------------------------------------------------------------------------


def test_submit_sends_only_the_overridden_sections_as_run_parameters(
        session, params, fake, tmp_path, capsys):
    overridden = load_params(REPO / "params.yaml", ["train.estimator=svm"])
    done = kfp_api.submit(session, overridden, "training", ["train.estimator=svm"],
                          base_params=params, out_dir=tmp_path)
    assert set(done.parameters) == {"train"}
    run = fake.runs[done.run_id]
    assert from_parameter(run["runtime_config"]["parameters"]["train"])["estimator"] == "svm"
    assert run["pipeline_version_reference"]["pipeline_version_id"] == done.version.version_id
    (experiment,) = fake.experiments.values()
    assert experiment["display_name"] == "slipway" and experiment["namespace"] == NS


def test_submit_reuses_the_experiment_and_the_fake_refuses_a_duplicate(
        session, params, fake, tmp_path, capsys):
    first = kfp_api.submit(session, params, "training", [], experiment="exp-1", out_dir=tmp_path)
    second = kfp_api.submit(session, params, "training", [], experiment="exp-1",
                            out_dir=tmp_path)
    assert first.experiment_id == second.experiment_id and len(fake.experiments) == 1
    assert first.version.version_id == second.version.version_id
    with pytest.raises(kfp_server_api.ApiException) as err:  # what get-or-create avoids
        session.client._experiment_api.experiment_service_create_experiment(
            experiment=kfp_server_api.V2beta1Experiment(display_name="exp-1", namespace=NS))
    assert err.value.status == 409


def test_an_override_that_changes_the_compiled_pipeline_is_not_a_run_parameter(
        session, params, fake, tmp_path):
    overridden = load_params(REPO / "params.yaml", ["kfp.task_profiles.train=gpu-h100"])
    with pytest.raises(SlipwayError, match="change the compiled pipeline itself"):
        kfp_api.submit(session, overridden, "training", ["kfp.task_profiles.train=gpu-h100"],
                       base_params=params, out_dir=tmp_path)
    assert fake.runs == {}


def test_cli_submit_wait_shows_progress_and_the_final_state(cli_env, fake, capsys):
    code = cli.main(["submit", "--set", "split.seed=7", "--wait", "--poll", "0.01", *cli_env])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "parameters set  split" in out
    assert re.search(r"✓ train-op succeeded", out)
    assert out.index("run pending") < out.index("run running") < out.index("run succeeded")
    assert "ended SUCCEEDED" in out


def test_cli_submit_wait_exits_1_when_the_run_fails(cli_env, fake, capsys):
    fake.script = ["PENDING", "RUNNING", "FAILED"]
    assert cli.main(["submit", "--wait", "--poll", "0.01", *cli_env]) == 1
    assert "ended FAILED" in capsys.readouterr().out


# ---- schedule -----------------------------------------------------------------------------


@pytest.mark.parametrize("cron, problem", [
    ("0 3 * * *", "has 5 fields; KFP wants 6, seconds first"),
    ("0 0 3 * * * 2027", "has 7 fields"),
    ("", "has 0 fields"),
    ("60 0 3 * * *", r"second field '60': '60' is outside 0-59"),
    ("0 0 24 * * *", r"hour field '24'"),
    ("0 0 3 0 * *", r"day of month field '0'"),
    ("0 0 3 * 13 *", r"month field '13'"),
    ("0 0 3 * * 7", r"day of week field '7'"),
    ("0 */0 * * * *", "step '0' is not a positive number"),
    ("0 0 5-3 * * *", "runs backwards"),
    ("0 0 x * * *", "'x' is not a number"),
    ("? 0 3 * * *", "'?' only in the day fields"),
])
def test_bad_crons_are_refused_with_the_field_named(cron, problem):
    with pytest.raises(SlipwayError, match=problem):
        kfp_api.validate_cron(cron)


@pytest.mark.parametrize("cron", ["0 0 3 * * *", "0 30 2 ? * MON-FRI", "0 */15 * * * *",
                                  "0 0 3 1,15 * *", "@daily", "@every 1h30m", "0 0 3 * jan-mar *"])
def test_good_crons_pass_and_the_api_servers_parser_agrees(cron):
    assert kfp_api.validate_cron(cron) == cron
    robfig_parse(cron)


def test_a_five_field_cron_is_refused_before_anything_is_sent(cli_env, fake, capsys):
    """KFP's API server would accept it and read it as second minute hour day month."""
    robfig_parse("0 3 * * *")  # the fake, like the API server, accepts it
    assert cli.main(["schedule", "create", "nightly", "--cron", "0 3 * * *", *cli_env]) == 2
    err = capsys.readouterr().err
    assert "has 5 fields" in err and 'add the seconds: "0 0 3 * * *"' in err
    assert fake.requests == []


def test_max_concurrency_outside_1_to_10_is_refused_locally_and_by_the_fake(
        session, compiled, fake):
    with pytest.raises(SlipwayError, match="max concurrency 11"):
        kfp_api.Schedule("nightly", "0 0 3 * * *", max_concurrency=11)
    version = kfp_api.ensure_version(session, compiled, COMMIT)
    experiment_id = kfp_api.ensure_experiment(session, "slipway")
    with pytest.raises(kfp_server_api.ApiException) as err:
        session.client.create_recurring_run(experiment_id, "x", cron_expression="0 0 3 * * *",
                                            max_concurrency=11, pipeline_id=version.pipeline_id,
                                            version_id=version.version_id)
    assert err.value.status == 400 and "at most 10" in err.value.body
    with pytest.raises(kfp_server_api.ApiException) as err:
        session.client.create_recurring_run(experiment_id, "x", cron_expression="0 3 * *",
                                            pipeline_id=version.pipeline_id,
                                            version_id=version.version_id)
    assert err.value.status == 400 and "Expected 5 or 6 fields, found 4" in err.value.body


def test_schedules_are_created_kept_replaced_listed_and_deleted(
        session, compiled, fake, capsys):
    version = kfp_api.ensure_version(session, compiled, COMMIT)
    nightly = kfp_api.Schedule("nightly", "0 0 3 * * *", max_concurrency=2)
    first, action = kfp_api.schedule(session, nightly, version, "slipway")
    assert action == "created"
    job = fake.recurring[first]
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert job["no_catchup"] is True and job["max_concurrency"] == "2"
    assert job["mode"] == "ENABLE"
    assert job["pipeline_version_reference"]["pipeline_version_id"] == version.version_id
    assert kfp_api.schedule(session, nightly, version, "slipway") == (first, "unchanged")
    later = kfp_api.Schedule("nightly", "0 0 4 * * *", max_concurrency=2)
    second, action = kfp_api.schedule(session, later, version, "slipway")
    assert action == "replaced" and list(fake.recurring) == [second]
    assert [r.display_name for r in kfp_api.list_schedules(session, "slipway")] == ["nightly"]
    with pytest.raises(SlipwayError, match="no schedule named 'nigthly'") as err:
        kfp_api.delete_schedule(session, "nigthly", "slipway")
    assert "nightly" in err.value.fix
    assert kfp_api.delete_schedule(session, "nightly", "slipway") == 1
    assert fake.recurring == {}


def test_listing_the_schedules_of_an_unknown_experiment_names_the_known_ones(
        session, fake):
    kfp_api.ensure_experiment(session, "slipway")
    with pytest.raises(SlipwayError, match="unknown experiment 'slipwya'") as err:
        kfp_api.list_schedules(session, "slipwya")
    assert "slipway" in err.value.fix


def test_cli_schedule_create_list_delete(cli_env, fake, capsys):
    base = ["schedule", "create", "nightly", "--cron", "0 0 3 * * *", *cli_env]
    assert cli.main(base) == 0
    assert cli.main(base) == 0
    assert cli.main(["schedule", "list", *cli_env]) == 0
    assert cli.main(["schedule", "delete", "nightly", *cli_env]) == 0
    out = capsys.readouterr().out
    assert "schedule nightly: created" in out and "schedule nightly: unchanged" in out
    assert re.search(r"nightly\s+0 0 3 \* \* \*\s+ENABLED", out)
    assert "schedule nightly: deleted" in out and fake.recurring == {}


# ---- the fake holds requests to the published swagger ---------------------------------------


def test_the_fake_refuses_a_request_that_breaks_the_swagger_contract(fake):
    request = urllib.request.Request(
        f"{fake.url}/apis/v2beta1/experiments", method="POST",
        data=json.dumps({"display_name": "x", "namespace": NS, "owner": "me"}).encode(),
        headers={"Authorization": "Bearer t0ken", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 400 and "unknown field 'owner'" in err.value.read().decode()
    assert fake.violations == ["ExperimentService_CreateExperiment: experiment: unknown "
                               "field 'owner'"]
    fake.violations.clear()


def test_the_fake_refuses_a_duplicate_pipeline_name(fake, compiled):
    client = kfp.Client(host=fake.url, existing_token="t0ken", namespace=NS)
    client.upload_pipeline(str(compiled.path), "training", namespace=NS)
    with pytest.raises(kfp_server_api.ApiException) as err:
        client.upload_pipeline(str(compiled.path), "training", namespace=NS)
    assert err.value.status == 409


# ---- make runs: the remote side ---------------------------------------------------------------


def test_the_runs_table_shows_remote_runs_with_the_settings_they_changed(
        session, params, fake, tmp_path, capsys):
    from pipelines import runs

    overridden = load_params(REPO / "params.yaml", ["train.estimator=svm"])
    done = kfp_api.submit(session, overridden, "training", ["train.estimator=svm"],
                          base_params=params, out_dir=tmp_path)
    kfp_api.submit(session, params, "training", [], out_dir=tmp_path)
    rows = runs.remote_rows(session)
    assert [r.where for r in rows] == ["kfp", "kfp"]
    by_id = {r.run: r for r in rows}
    assert by_id[done.run_id].params == "train.estimator=svm"
    assert by_id[done.run_id].pipeline == "training"
    assert by_id[done.run_id].version == f"({done.version.name})"
    assert [r.params for r in rows if r.run != done.run_id] == ["(defaults)"]
    capsys.readouterr()
    runs.render(rows)
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["where", "run", "pipeline"]
    assert any(done.run_id in line and "train.estimator=svm" in line for line in table)


def test_cli_runs_says_when_no_endpoint_is_configured(monkeypatch, tmp_path, capsys):
    for key in ("KFP_HOST", "KFP_TOKEN", "KFP_NAMESPACE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(REPO)
    assert cli.main(["runs", "--set", f"kfp.pipeline_root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "no runs yet" in out and "no KFP endpoint configured" in out
