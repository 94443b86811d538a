"""A run's output folder: what it holds, whether a new run may write there, and its checkpoint.

Layout of ``OUT``::

    rounds.parquet        one row per finished round (the results; the only file a Parquet
                          reader of OUT sees: everything else starts with "_")
    _masks.parquet        SkyMask's mask PCA coordinates per round (skymask runs)
    _config.yaml          the run's config
    _state/checkpoint.json     round, config hash and file of the checkpoint (read first)
    _state/checkpoint-R.pt     tensors and plain values only, loaded with ``weights_only=True``
    _state/layout.json         where the client workers and the mask trainer ran (written after round 1)

Rules (a user's results are never lost silently):

* a folder holding another run's files is refused unless the user says
  ``resume`` (continue it; only with a checkpoint of the same experiment) or
  ``overwrite`` (replace it);
* nothing is deleted before the new run commits to replacing the old one:
  :meth:`RunFolder.commit` runs after the new run's first round, and only then
  are the old run's leftovers removed;
* the checkpoint is never unpickled beyond tensors and plain types: its JSON
  metadata is checked first, and ``torch.load(weights_only=True)`` refuses any
  other object (a crafted pickle cannot run code). Checkpoints of older
  versions (``OUT/checkpoint.pt``, arbitrary pickles) are never loaded.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import ResultsFolderError
from .results import read_parquet
from .storage import atomic_write, atomic_write_text, check_writable_folder

ROUNDS = "rounds.parquet"
MASKS = "_masks.parquet"
CONFIG = "_config.yaml"
LEGACY_NAMES = ("masks.parquet", "config.yaml")  # older versions' names: recognised, replaced by a new run
STATE_DIR = "_state"
CHECKPOINT_META = "checkpoint.json"
LEGACY_CHECKPOINT = "checkpoint.pt"  # older versions: a full pickle in OUT itself, never loaded
FORMAT = 1

Mode = Literal["new", "resume", "overwrite"]


@dataclass
class Checkpoint:
    """Everything needed to continue after ``round`` (tensors and plain values only)."""

    round: int
    weights: torch.Tensor
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    defense_state: dict[str, Any] = field(default_factory=dict)
    attack_state: dict[str, Any] = field(default_factory=dict)


class RunFolder:
    """The files of one run in ``path``; see the module docstring for the rules."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def rounds(self) -> Path:
        return self.path / ROUNDS

    @property
    def masks(self) -> Path:
        return self.path / MASKS

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    def existing_config(self) -> Path | None:
        """The folder's config file (this version's name, or an older version's), if any."""
        for p in (self.config, self.path / "config.yaml"):
            if p.exists():
                return p
        return None

    @property
    def state_dir(self) -> Path:
        return self.path / STATE_DIR

    def result_files(self) -> list[Path]:
        """The files of an earlier run present in the folder."""
        if not self.path.is_dir():
            return []
        names = [self.rounds, self.masks, self.config, self.state_dir, self.path / LEGACY_CHECKPOINT,
                 *(self.path / n for n in LEGACY_NAMES)]
        return [p for p in names if p.exists()]

    def checkpoint_meta(self) -> dict[str, Any] | None:
        """The checkpoint's JSON metadata, or None if there is no usable checkpoint."""
        meta = self.state_dir / CHECKPOINT_META
        if not meta.exists():
            return None
        try:
            doc = json.loads(meta.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            raise ResultsFolderError(f"checkpoint metadata {meta} is unreadable; pass --overwrite to start over") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("round"), int) \
                or not isinstance(doc.get("config_hash"), str) \
                or not re.fullmatch(r"checkpoint-[0-9]+\.pt", str(doc.get("file"))):
            raise ResultsFolderError(f"checkpoint metadata {meta} is not a skymask-ray checkpoint of this version; "
                                     "pass --overwrite to start over")
        return doc

    # ----- before a run ------------------------------------------------------------------------
    def prepare(self, config_hash: str, mode: Mode) -> Checkpoint | None:
        """Check that a run of ``config_hash`` may write here; returns the checkpoint to resume from.

        Writes and deletes nothing. Raises :class:`ResultsFolderError` (one line)
        when the folder holds results the run would destroy or cannot continue.
        """
        check_writable_folder(self.path)
        found = self.result_files()
        if mode == "overwrite" or not found:
            return None
        listing = ", ".join(p.relative_to(self.path).as_posix() for p in found)
        if mode == "new":
            raise ResultsFolderError(
                f"{self.path} already holds results of a run ({listing}); pass --resume to continue it or "
                f"--overwrite to replace it (or choose another --out)")
        if (self.path / LEGACY_CHECKPOINT).exists():
            raise ResultsFolderError(
                f"{self.path / LEGACY_CHECKPOINT} is a checkpoint of an older skymask-ray (a pickle, never loaded "
                f"for safety); pass --overwrite to start over")
        meta = self.checkpoint_meta()
        if meta is None:
            if self.rounds.exists():
                raise ResultsFolderError(
                    f"{self.path} holds rounds but no checkpoint to continue from; pass --overwrite to start over "
                    f"(or choose another --out)")
            return None
        if meta["config_hash"] != config_hash:
            raise ResultsFolderError(
                f"the checkpoint in {self.path} belongs to another config ({meta['config_hash']} != {config_hash}); "
                f"pass --overwrite to replace that run (or choose another --out)")
        for rows in (self.rounds, self.masks):  # the rows a resumed run keeps must be readable
            if rows.exists():
                try:
                    read_parquet(rows)
                except ValueError as exc:
                    raise ResultsFolderError(f"cannot resume: {exc}; pass --overwrite to start over") from None
        return self.load_checkpoint()

    def load_checkpoint(self) -> Checkpoint:
        """Load the checkpoint with ``weights_only=True``: tensors and plain types, nothing executable."""
        meta = self.checkpoint_meta()
        if meta is None:
            raise ResultsFolderError(f"{self.path} has no checkpoint to continue from")
        path = self.state_dir / meta["file"]
        try:
            doc = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corruption is one message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ResultsFolderError(f"refusing checkpoint {path}: {first[:200]}; pass --overwrite to start over") \
                from None
        if not isinstance(doc, dict) or not isinstance(doc.get("weights"), torch.Tensor):
            raise ResultsFolderError(f"checkpoint {path} does not hold model weights; pass --overwrite to start over")
        return Checkpoint(round=int(doc["round"]), weights=doc["weights"], buffers=doc.get("buffers") or {},
                          defense_state=doc.get("defense_state") or {}, attack_state=doc.get("attack_state") or {})

    # ----- during a run ------------------------------------------------------------------------
    def commit(self, keep_masks: bool) -> None:
        """The new run's first round is done: remove what the old run left that the new one will not replace."""
        stale = [self.path / LEGACY_CHECKPOINT, *(self.path / n for n in LEGACY_NAMES)]
        if not keep_masks:
            stale.append(self.masks)
        for p in stale:
            if p.exists():
                p.unlink()
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)

    def save_checkpoint(self, ckpt: Checkpoint, config_hash: str, version: str) -> None:
        """Write a new checkpoint file, point the metadata at it, then drop older files.

        Each step is atomic, so a kill at any moment leaves a metadata file that
        names a complete checkpoint (the old one or the new one).
        """
        buf = io.BytesIO()
        torch.save({"round": ckpt.round, "weights": ckpt.weights, "buffers": ckpt.buffers,
                    "defense_state": ckpt.defense_state, "attack_state": ckpt.attack_state}, buf)
        name = f"checkpoint-{ckpt.round}.pt"
        atomic_write(self.state_dir / name, lambda fh: fh.write(buf.getvalue()))
        atomic_write_text(self.state_dir / CHECKPOINT_META, json.dumps(
            {"format": FORMAT, "round": ckpt.round, "file": name, "config_hash": config_hash, "version": version}))
        for old in self.state_dir.glob("checkpoint-*.pt"):
            if old.name != name:
                old.unlink()
