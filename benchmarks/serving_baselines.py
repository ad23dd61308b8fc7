"""Baselines for ``make bench-serve``: the same model behind a bare Starlette app, and in
two stock BentoML services written the way BentoML's documentation shows.

None of these validates input beyond what NumPy does, and none is meant for production;
they bound what the framework costs. All three load the model version through the same
verified loader as the real service (``serving.model.LoadedModel``) and run the same
preprocessing and model, so the model's own cost is identical everywhere.

    uvicorn --factory benchmarks.serving_baselines:create_bare_app --port 3100
    bentoml serve benchmarks.serving_baselines:StockClassifier --port 3101
    bentoml serve benchmarks.serving_baselines:StockBatchedClassifier --port 3102

The model comes from ``SLIPWAY_MODEL`` (a full ``name:version`` tag for the BentoML ones).
"""

from __future__ import annotations

import os

import bentoml
import numpy as np

from serving.model import pinned_model


def _load():
    from serving.model import MODEL_ENV, LoadedModel

    return LoadedModel.from_store(os.environ.get(MODEL_ENV))


def _proba(model, values: np.ndarray) -> np.ndarray:
    """Preprocess a numeric row matrix (schema order) and predict class probabilities."""
    import pandas as pd

    frame = pd.DataFrame(values, columns=model.names)
    x = np.asarray(model.transformer.transform(frame), dtype=np.float32)
    return model.trainer.predict_proba(x)


def create_bare_app():
    """A bare Starlette app: parse JSON, run the model in the thread pool, answer JSON."""
    import orjson
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    model = _load()
    classes = np.asarray(model.classes, dtype=object)

    async def predict(request: Request) -> Response:
        body = orjson.loads(await request.body())
        values = np.asarray(body["instances"], dtype=np.float64)
        proba = await run_in_threadpool(_proba, model, values)
        answer = {"predictions": classes[proba.argmax(axis=1)].tolist(), "probabilities": proba,
                  "model_version": model.version}
        return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b"\n")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]),
                             Route("/readyz", ready)])


# As BentoML's quickstart: the model is a class attribute, loaded in __init__, and one
# typed @bentoml.api method takes a NumPy array and returns one.
@bentoml.service(resources={"cpu": "2"}, traffic={"timeout": 10})
class StockClassifier:
    bento_model = pinned_model()

    def __init__(self) -> None:
        self.model = _load()

    @bentoml.api
    def predict(self, input_data: np.ndarray) -> np.ndarray:
        return _proba(self.model, input_data)


# As BentoML's adaptive batching guide: the same, with batchable=True.
@bentoml.service(resources={"cpu": "2"}, traffic={"timeout": 10})
class StockBatchedClassifier:
    bento_model = pinned_model()

    def __init__(self) -> None:
        self.model = _load()

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=1024, max_latency_ms=1000)
    def predict(self, input_data: np.ndarray) -> np.ndarray:
        return _proba(self.model, input_data)
