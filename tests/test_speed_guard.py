"""The speed guard: CI's short run stays within every bound, and a kernel made slow on purpose fails it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import speed_guard
from skymask_ray.kernels import Choice
from skymask_ray.skymask import masked

ROOT = Path(__file__).resolve().parents[1]


def test_a_slow_int8_gram_forced_on_the_run_fails_the_guard(monkeypatch):
    """Forcing the int8 Gram under a slow torch._int_mm (as on a CPU without fast int8) breaks the gram bound."""
    if "int8" not in masked.GRAM_KERNELS:
        pytest.skip("this torch has no int8 product")
    real = torch._int_mm

    def slow_int_mm(a, b):
        time.sleep(0.25)
        return real(a, b)

    monkeypatch.setattr(torch, "_int_mm", slow_int_mm)
    monkeypatch.setattr(masked, "GRAM_BLOCK_BYTES", 128 * 4096)  # 8 blocks of 4096 coordinates
    monkeypatch.setattr(masked, "gram_choice", lambda device, k: Choice("gram", "int8"))
    ratio = speed_guard.gram_ratio(128, 2**15)  # 8 slow calls: 2 s against ~0.1 s
    assert not ratio.ok and ratio.value > 3 * speed_guard.BOUNDS["gram"]


def test_a_slow_mask_step_fails_the_guard(monkeypatch):
    slow = masked.RowKernels(masked.EAGER.sums, masked.EAGER.grad,
                             lambda *a: time.sleep(0.2) or masked.EAGER.sgd(*a), compiled=False)
    monkeypatch.setattr(masked, "row_kernels", lambda *a: (slow, Choice("mask_step", "eager")))
    ratio = speed_guard.mask_step_ratio(33, 2**15)
    assert not ratio.ok and ratio.measured_s >= 0.2


def test_ratio_bounds_decide_the_exit_status():
    good = speed_guard.Ratio("gram", 1.0, 1.0, "")
    bad = speed_guard.Ratio("setup", 9.0, 1.0, "")
    assert good.ok and not bad.ok and bad.value == 9.0
    assert "**NO**" in speed_guard.table([good, bad]) and "<= 4" in speed_guard.table([bad])


@pytest.mark.slow
def test_short_speed_guard_passes_on_this_machine(tmp_path):
    """What CI runs: every ratio within its bound, in about a minute, nothing written to benchmarks/results."""
    before = (ROOT / "benchmarks" / "results" / "speed_guard.md").stat().st_mtime_ns \
        if (ROOT / "benchmarks" / "results" / "speed_guard.md").exists() else None
    out = subprocess.run([sys.executable, "-m", "benchmarks.speed_guard", "--short"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("gram", "mask_step", "client_path", "client_round", "setup"):
        assert f"| {name} |" in out.stdout
    after = (ROOT / "benchmarks" / "results" / "speed_guard.md").stat().st_mtime_ns \
        if (ROOT / "benchmarks" / "results" / "speed_guard.md").exists() else None
    assert before == after


def test_the_short_guard_allows_its_headroom_and_no_more():
    near = speed_guard.Ratio("mask_step", 1.7, 1.0, "")
    assert not near.ok and dataclasses.replace(near, headroom=speed_guard.SHORT_HEADROOM).ok
    assert not speed_guard.Ratio("gram", 100.0, 1.0, "", headroom=speed_guard.SHORT_HEADROOM).ok
