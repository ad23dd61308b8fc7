"""Slipway pipelines: kfp ``@dsl.pipeline`` wirings of the stage components.

Each module exposes ``build(params) -> pipeline function``; :data:`PIPELINES` names them.
``python -m pipelines`` compiles them to IR YAML or runs one locally (see
:mod:`pipelines.cli`).
"""

PIPELINES = {"training": "pipelines.training", "tuning": "pipelines.tuning"}
