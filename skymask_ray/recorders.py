"""Callbacks of the round loop: what is kept of a round, and what a caller is told.

:class:`FolderRecorder` writes a run's folder (rows, SkyMask's mask
coordinates, the checkpoint, the config) after each round, following
:mod:`skymask_ray.run_folder`'s rules: a new run commits to replacing an
earlier run's files only once its first round is done.
:class:`FunctionCallback` turns rows and set-up phases into calls of plain
functions (the CLI's progress lines). :class:`LayoutRecorder` writes where
the run's work went (``OUT/_state/layout.json``) once its first round is done.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from . import __version__
from .config import ExperimentConfig, save_config
from .results import MASK_SCHEMA, SCHEMA, ParquetLog
from .run_folder import RunFolder
from .storage import atomic_write_text

if TYPE_CHECKING:
    from .simulation import RoundResult, Simulation


class FolderRecorder:
    """Rows, masks, checkpoint and config of one run, in its :class:`RunFolder`."""

    def __init__(self, folder: RunFolder, cfg: ExperimentConfig, config_hash: str, resumed: bool) -> None:
        self.folder, self.cfg, self.hash = folder, cfg, config_hash
        self.committed = resumed  # a resumed run writes into its own folder from the start
        self.keep_masks = cfg.defense == "skymask"
        self.rows = ParquetLog(folder.rounds, SCHEMA, keep_existing=resumed)
        self.masks = ParquetLog(folder.masks, MASK_SCHEMA, keep_existing=resumed) if self.keep_masks else None
        self.start_round = 1

    def start(self, start_round: int) -> None:
        """Forget rows after the checkpoint (a run killed between its rows and its checkpoint)."""
        self.start_round = start_round
        for log in (self.rows, self.masks):
            if log is not None:
                log.truncate(lambda r: r["round"] < start_round)

    def on_setup(self, sim: "Simulation", phase: str) -> None:
        pass

    def on_round_end(self, sim: "Simulation", result: "RoundResult") -> None:
        r = result.row.round
        if not self.committed:
            self.folder.commit(keep_masks=self.keep_masks)
            self.committed = True
        if r == self.start_round:
            save_config(self.cfg, self.folder.config)
        self.rows.append(result.row.as_dict())
        if self.masks is not None and "mask_coords" in result.info:
            self.masks.append(*mask_rows(result))
        self.folder.save_checkpoint(sim.checkpoint(r), self.hash, __version__)


def mask_rows(result: "RoundResult") -> list[dict[str, Any]]:
    """One row per mask of the round's PCA scatter: the server's (index 0), then each valid client's (id + 1)."""
    coords, labels = result.info["mask_coords"], result.info["mask_labels"]
    r = result.row.round
    rows = [{"round": r, "index": 0, "pc1": float(coords[0, 0]), "pc2": float(coords[0, 1]),
             "label": int(labels[0]), "malicious": False, "accepted": True, "is_server": True}]
    positions = result.valid.nonzero().flatten().tolist()
    for j, i in enumerate(positions, start=1):
        rows.append({"round": r, "index": int(result.clients[i]) + 1, "pc1": float(coords[j, 0]),
                     "pc2": float(coords[j, 1]), "label": int(labels[j]), "malicious": bool(result.malicious[i]),
                     "accepted": bool(result.accepted[i]), "is_server": False})
    return rows


class FunctionCallback:
    """Calls ``on_round(row_dict)`` after each round and ``on_setup(line)`` for each set-up phase."""

    def __init__(self, on_round: Callable[[dict[str, Any]], None] | None = None,
                 on_setup: Callable[[str], None] | None = None) -> None:
        self.round_fn, self.setup_fn = on_round, on_setup

    def on_setup(self, sim: "Simulation", phase: str) -> None:
        if self.setup_fn is not None:
            self.setup_fn(phase)

    def on_round_end(self, sim: "Simulation", result: "RoundResult") -> None:
        if self.round_fn is not None:
            self.round_fn(result.row.as_dict())


class LayoutRecorder:
    """A round-loop callback that writes the run's layout, kernel choices and set-up times (seconds per
    phase, from the interpreter's start) to ``OUT/_state/layout.json`` after its first round.

    Not at set-up: until the first round is done the folder may still hold an earlier run (whose
    ``_state`` is removed when the new run commits), and a folder a run died in during set-up must
    not look like it holds results. Readers of ``OUT`` with pandas/pyarrow skip ``_`` paths.
    """

    written = False

    def on_setup(self, sim: "Simulation", phase: str) -> None:
        pass

    def on_round_end(self, sim: "Simulation", result: "RoundResult") -> None:
        if self.written:
            return
        doc = {"from_round": int(result.row.round), **sim.layout.describe(), "kernels": dict(sim.kernels),
               "setup_s": dict(sim.setup_s),
               "worker_nodes": sim.clients.placement()}  # where each worker ran in that round (pending ones too)
        atomic_write_text(sim.folder.state_dir / "layout.json", json.dumps(doc, indent=1) + "\n")
        self.written = True
