"""Measuring scripts; run each from the repository root as ``python -m benchmarks.NAME``.

Studies are data, not scripts: ``benchmarks/studies/*.yaml``, run with
``skymask-ray bench --grid``; their rows are ``benchmarks/results/<study>.parquet``
and their tables ``benchmarks/RESULTS.md``. What the scripts share is
:mod:`benchmarks.common`.
"""
