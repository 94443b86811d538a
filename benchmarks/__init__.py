"""Benchmark scripts; run each from the repository root as ``python -m benchmarks.NAME``.

What they share (paths, study files, options, Markdown tables, memory) is in
:mod:`benchmarks.common`; their grids are in ``benchmarks/studies/*.yaml``.
"""
