"""Kernel choice by measurement: the probe keeps the fastest candidate, drops far slower ones early, and caches."""

from __future__ import annotations

import json
import time

import pytest

from skymask_ray import kernels
from skymask_ray.kernels import Choice, cache_path, choose, machine_key


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYMASK_RAY_CACHE", str(tmp_path))
    return tmp_path / "kernels.json"


def sleeper(seconds_per_unit: float, calls: list[int]):
    def run(n: int) -> None:
        calls.append(n)
        time.sleep(seconds_per_unit * n)

    return run


def test_the_faster_candidate_is_chosen_and_cached(cache):
    fast_calls, slow_calls = [], []
    cands = {"slow": sleeper(0.002, slow_calls), "fast": sleeper(0.0005, fast_calls)}
    first = choose("op", "K<=8", cands, "cpu", small=2, full=10)
    assert first.chosen == "fast" and not first.cached
    assert first.seconds["fast"] < first.seconds["slow"]
    assert fast_calls == [2, 10, 10, 10]  # warm-up on the small probe, then the repeats at full size
    assert cache_path() == cache and cache.exists()
    again = choose("op", "K<=8", cands, "cpu", small=2, full=10)
    assert again.cached and again.chosen == "fast" and len(fast_calls) == 4  # nothing timed again
    assert choose("op", "K<=16", cands, "cpu", small=2, full=10).cached is False  # another size bucket


def test_a_far_slower_candidate_is_dropped_after_the_small_probe(cache):
    slow_calls = []
    cands = {"fast": sleeper(0.0001, []), "slow": sleeper(0.01, slow_calls)}
    choice = choose("op", "b", cands, "cpu", small=3, full=300)
    assert choice.chosen == "fast"
    assert slow_calls == [3]  # never run at full size (it would have taken 3 s)
    assert choice.seconds["slow"] == pytest.approx(100 * 0.03, rel=0.5)  # its small time scaled to the full size


def test_the_default_wins_a_near_tie_and_a_single_candidate_is_not_probed(cache, monkeypatch):
    calls = []
    same = {"second": lambda n: None, "first": lambda n: None}
    for other, winner in ((0.5, "second"), (0.46, "second"), (0.44, "first")):  # margin: 10 % of the default's
        monkeypatch.setattr(kernels, "measure", lambda cands, *a, o=other: {"second": 0.5, "first": o})
        assert choose("op", "b", same, "cpu", small=1, full=1, use_cache=False).chosen == winner
    only = choose("op", "b", {"only": sleeper(1.0, calls)}, "cpu", small=1, full=1)
    assert only.chosen == "only" and calls == [] and only.note == "only candidate"
    with pytest.raises(ValueError, match="no candidate"):
        choose("op", "b", {}, "cpu", small=1, full=1)


def test_a_corrupt_or_foreign_cache_is_ignored_and_rewritten(cache):
    cache.write_text("{not json")
    assert choose("op", "b", {"a": lambda n: None, "b": lambda n: None}, "cpu", small=1, full=1).cached is False
    doc = json.loads(cache.read_text())
    assert doc["version"] == kernels.CACHE_VERSION and len(doc["entries"]) == 1
    cache.write_text(json.dumps({"version": 999, "entries": {}}))
    assert choose("op", "b", {"a": lambda n: None, "b": lambda n: None}, "cpu", small=1, full=1).cached is False


def test_a_cached_choice_that_is_no_longer_a_candidate_is_probed_again(cache):
    choose("op", "b", {"a": sleeper(0.001, []), "b": sleeper(0.0001, [])}, "cpu", small=1, full=1)
    key = next(iter(json.loads(cache.read_text())["entries"]))
    assert "| op | b | a,b" in key and machine_key("cpu") in key
    # another candidate list is another key: nothing stale is reused
    assert choose("op", "b", {"a": lambda n: None, "c": lambda n: None}, "cpu", small=1, full=1).cached is False


def test_an_unwritable_cache_does_not_stop_the_choice(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SKYMASK_RAY_CACHE", str(blocker / "sub"))  # a folder below a file: cannot be made
    assert choose("op", "b", {"a": sleeper(0.001, []), "b": sleeper(0.0001, [])}, "cpu", small=1, full=1).chosen == "b"


def test_machine_key_names_cpu_torch_device_and_threads():
    key = machine_key("cpu")
    assert "torch " in key and "| cpu |" in key and "threads" in key


def test_summary_lists_the_times_fastest_first():
    text = Choice("gram", "float32", {"int8": 71.0, "float32": 0.54}, cached=True).summary()
    assert text == "gram=float32 (float32 0.54s, int8 71s; cached)"


@pytest.mark.parametrize("slow", ["madvise", "plain"])
def test_numpy_huge_pages_are_asked_for_only_where_that_allocates_faster(cache, monkeypatch, slow):
    """The faster of huge-page advice and none is set for the process (here one made slow on purpose)."""
    calls = []

    def switch(advise: bool) -> bool:
        calls.append(advise)
        if advise == (slow == "madvise"):
            time.sleep(0.3)
        return not advise

    monkeypatch.setattr(kernels, "_numpy_hugepage_switch", lambda: switch)
    monkeypatch.setattr(kernels, "HUGEPAGE_PROBE_BYTES", 4096)  # the real allocations take no time beside the sleep
    choice = kernels.tune_numpy_allocations()
    fast = "plain" if slow == "madvise" else "madvise"
    assert choice.chosen == fast and choice.seconds[slow] >= 0.3 > choice.seconds[fast]
    assert calls[-1] == (fast == "madvise")  # the process keeps the faster setting
    calls.clear()
    again = kernels.tune_numpy_allocations()
    assert again.cached and again.chosen == fast and calls == [fast == "madvise"]  # no probe, only the setting
