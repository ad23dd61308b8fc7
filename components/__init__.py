"""Slipway stage components.

One module per stage (ingest, validate, split, preprocess, train, evaluate, gate, package).
Each holds a pure core (plain functions over files and frames, no kfp or DVC imports) and a
thin CLI (``python -m components.<stage>``, used by ``dvc.yaml``). The kfp components that
call the same cores live in :mod:`components.kfp_components`.
"""
