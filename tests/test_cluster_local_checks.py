"""The lost-node checks of ``benchmarks.cluster_local`` on made-up records, and where it reads a cell's progress.

The end-to-end run (tests/test_cluster_local.py) shows the checks hold on a real cluster; these show they
fail when the kill misses the cell's rounds or the pool's restart line is not after it.
"""

from __future__ import annotations

import torch

from benchmarks.cluster_local import Kill, checks, kill_cell, rounds_done
from skymask_ray.run_folder import Checkpoint, RunFolder

MID = "a worker node was killed in the middle of a cell"
RESTART = "the pool logged the restart with its round"
CELL = "synthetic-mlp-n12-m0.25-min_max-skymask-s0"


def record(rounds_done: int | None, restart_round: int | None) -> dict:
    log = [[0.5, "[1/3] " + CELL.replace("skymask", "median")], [1.0, "[2/3] " + CELL]]
    if restart_round is not None:
        log.append([2.0, f"WARNING skymask_ray.clients.pool: round {restart_round}: client worker 1 lost its node "
                         f"f00003; a new worker trains its clients for this call"])
    kill = None if rounds_done is None else Kill("n3", "worker.cpu", 1.5, 2, True, [1], rounds_done, 6)
    return {"log": log, "kill": None if kill is None else kill.__dict__}


def test_a_kill_between_the_cells_first_and_last_round_with_a_later_restart_passes():
    got = checks(record(2, 3))
    assert got[MID] and got[RESTART]
    assert kill_cell(record(2, 3)) == CELL


def test_a_kill_before_the_first_round_or_after_the_last_is_not_mid_cell():
    assert not checks(record(0, 1))[MID]
    assert not checks(record(6, 7))[MID]


def test_a_restart_line_of_a_round_the_kill_did_not_precede_does_not_count():
    assert not checks(record(3, 3))[RESTART]
    assert not checks(record(3, None))[RESTART]
    assert not checks(record(None, 3))[RESTART] and not checks(record(None, 3))[MID]


def test_rounds_done_reads_the_cells_checkpoint_under_any_date_folder(tmp_path):
    assert rounds_done(tmp_path, CELL) == 0
    folder = RunFolder(tmp_path / "2026-12-07" / CELL)
    folder.path.mkdir(parents=True)
    assert rounds_done(tmp_path, CELL) == 0
    folder.save_checkpoint(Checkpoint(round=2, weights=torch.zeros(3)), "hash", "0")
    assert rounds_done(tmp_path, CELL) == 2
    assert rounds_done(tmp_path, CELL.replace("skymask", "median")) == 0
