"""Slipway benchmarks: ``python -m benchmarks.<name>`` (see docs/benchmarks.md).

Each module measures and reports; none asserts on a time. Results go to the terminal and,
as JSON, under ``build/benchmarks/``.
"""
