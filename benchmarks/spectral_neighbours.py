"""The ``spectral`` rule's neighbour count, chosen on development Gram matrices only (issue 32).

``record`` runs the development cells of benchmarks/PROTOCOL.md (preset paper-fmnist: Fashion-MNIST
cnn, 100 clients, bias 0.5; lie and min_max at 20 % with distinct attackers (spread 1), and no
attack; seeds 0-2; 10 rounds; skymask.select spectral at its defaults; attacker ids a seeded random
set) with ``skymask.keep_gram`` and keeps every round's Gram matrix of the binary masks (row 0 the
server) and which rows are attackers, in benchmarks/results/dev_grams.parquet. Each cell is added to
the file as it ends; cells already in it are skipped.

``analyse`` re-clusters every recorded round as the server would (:func:`cluster_from_gram`, the
round's own random state) at cohort sizes K: all 100 clients, and ``--draws`` random sub-samples
of K clients a round (the server's row always kept), so a cohort's attacker count varies as it does
under pool sampling. Each neighbour rule is scored by mean TPR and FPR over rounds and draws. It
prints the table and writes benchmarks/results/spectral_neighbours.md.

    python -m benchmarks.spectral_neighbours record
    python -m benchmarks.spectral_neighbours analyse [--sizes 25,50,100] [--draws 10]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np
import pyarrow as pa

from benchmarks.common import command_line, comma_list, results_path, write_result
from skymask_ray.markdown import markdown_table
from skymask_ray.results import read_parquet, write_rows

GRAMS = results_path("dev_grams.parquet")
CONDITIONS = (("lie", 0.2), ("min_max", 0.2), ("none", 0.2))
SEEDS = (0, 1, 2)
SCHEMA = pa.schema([("attack", pa.string()), ("malicious_fraction", pa.float64()), ("seed", pa.int64()),
                    ("round", pa.int64()), ("row", pa.int64()), ("client", pa.int64()), ("malicious", pa.bool_()),
                    ("gram", pa.list_(pa.float32()))])


# ----- record ---------------------------------------------------------------------------------
def gram_rows(attack: str, fraction: float, seed: int, result: Any) -> list[dict[str, Any]]:
    """One row per mask of a finished round's Gram: the server's (row 0, client -1), then each valid client's."""
    gram = np.asarray(result.info["mask_gram"], dtype=np.float32)
    positions = result.valid.nonzero().flatten().tolist()
    clients = [-1] + [int(result.clients[i]) for i in positions]
    malicious = [False] + [bool(result.malicious[i]) for i in positions]
    if gram.shape != (len(clients), len(clients)):
        raise RuntimeError(f"Gram {gram.shape} does not match {len(clients)} masks")
    return [{"attack": attack, "malicious_fraction": fraction, "seed": seed, "round": int(result.row.round), "row": j,
             "client": c, "malicious": m, "gram": gram[j].tolist()} for j, (c, m) in enumerate(zip(clients, malicious))]


def record_cell(attack: str, fraction: float, seed: int, rounds: int) -> list[dict[str, Any]]:
    """Run one development cell with ``skymask.keep_gram`` on; every round's Gram rows."""
    import tempfile

    from skymask_ray.experiment import build_config
    from skymask_ray.simulation import Simulation

    over: dict[str, Any] = {"clients": 100, "malicious_fraction": fraction, "malicious_selection": "random",
                            "attack": attack, "defense": "skymask", "rounds": rounds, "seed": seed,
                            "skymask": {"select": "spectral", "keep_gram": True}}
    if attack != "none":
        over["attack_params"] = {"spread": 1.0}
    cfg = build_config(preset="paper-fmnist", overrides=over)
    rows: list[dict[str, Any]] = []

    class Keep:
        def on_setup(self, sim: Any, phase: str) -> None:
            pass

        def on_round_end(self, sim: Any, result: Any) -> None:
            rows.extend(gram_rows(attack, fraction, seed, result))

    with tempfile.TemporaryDirectory() as folder, Simulation(cfg, Path(folder) / "run", callbacks=[Keep()]) as sim:
        sim.run()
    return rows


def record(path: Path, rounds: int) -> None:
    done = read_parquet(path) if path.exists() else SCHEMA.empty_table()
    have = {(a, f, s) for a, f, s in zip(*(done.column(c).to_pylist() for c in ("attack", "malicious_fraction", "seed")))}
    for seed in SEEDS:
        for attack, fraction in CONDITIONS:
            if (attack, fraction, seed) in have:
                continue
            t0 = time.perf_counter()
            new = pa.Table.from_pylist(record_cell(attack, fraction, seed, rounds), schema=SCHEMA)
            done = pa.concat_tables([done, new])
            write_rows(done, path)
            print(f"{attack} {fraction:.0%} seed {seed}: {rounds} rounds in {time.perf_counter() - t0:.0f} s", flush=True)


# ----- analyse --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Round:
    """One recorded round: the Gram (row 0 the server) and which client rows are attackers."""

    attack: str
    seed: int
    round: int
    gram: np.ndarray
    malicious: np.ndarray  # (K,) over the client rows 1..K


def load_rounds(path: Path) -> list[Round]:
    t = read_parquet(path).to_pandas()
    out = []
    for (attack, seed, r), g in t.groupby(["attack", "seed", "round"], sort=True):
        g = g.sort_values("row")
        out.append(Round(attack, int(seed), int(r), np.stack(g["gram"].to_numpy()).astype(np.float64),
                         g["malicious"].to_numpy()[1:]))
    return out


def fixed(fraction: float) -> Callable[[int], int]:
    """The neighbour count ceil(fraction K), at least 3."""
    return lambda k: max(3, math.ceil(fraction * k))


RULES: dict[str, Callable[[int], int]] = {f"ceil({c:g} K)": fixed(c) for c in (0.06, 0.08, 0.1, 0.12, 0.15, 0.2)}


def score(rnd: Round, rows: np.ndarray, neighbors: int) -> tuple[float, float]:
    """TPR and FPR of the server's spectral selection on the Gram restricted to client rows ``rows``."""
    from skymask_ray.skymask.select import cluster_from_gram, cluster_state

    idx = np.concatenate([[0], rows + 1])
    sub = rnd.gram[np.ix_(idx, idx)]
    benign = cluster_from_gram(sub, cluster_state(rnd.seed, rnd.round), rule="spectral", neighbors=neighbors).benign[1:]
    mal = rnd.malicious[rows]
    tpr = float((~benign & mal).sum() / mal.sum()) if mal.any() else math.nan
    fpr = float((~benign & ~mal).sum() / (~mal).sum())
    return tpr, fpr


def analyse(path: Path, sizes: list[int], draws: int) -> list[list[str]]:
    rounds = load_rounds(path)
    table = []
    for attack in sorted({r.attack for r in rounds}):
        mine = [r for r in rounds if r.attack == attack]
        for k in sizes:
            rng = np.random.default_rng(k)
            samples = [(r, np.sort(rng.choice(len(r.malicious), size=k, replace=False)) if k < len(r.malicious)
                        else np.arange(len(r.malicious))) for r in mine for _ in range(draws if k < len(r.malicious) else 1)]
            for name, rule in RULES.items():
                got = np.array([score(r, rows, rule(k + 1)) for r, rows in samples])  # K + 1 masks with the server's
                table.append([attack, str(k), name, str(rule(k + 1)), str(len(samples)),
                              f"{np.nanmean(got[:, 0]):.2f}" if attack != "none" else "-", f"{got[:, 1].mean():.3f}"])
                print(" | ".join(table[-1]), flush=True)
    return table


@click.group(help=__doc__)
def main() -> None:
    pass


@main.command("record")
@click.option("--rounds", type=int, default=10)
@click.option("--grams", type=click.Path(dir_okay=False, path_type=Path), default=GRAMS)
def record_cmd(rounds: int, grams: Path) -> None:
    record(grams, rounds)


@main.command("analyse")
@click.option("--sizes", callback=comma_list(int), default="25,50,100", help="Cohort sizes K (clients).")
@click.option("--draws", type=int, default=10, help="Sub-samples of each round at K below the population.")
@click.option("--grams", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=GRAMS)
def analyse_cmd(sizes: list[int], draws: int, grams: Path) -> None:
    table = analyse(grams, sizes, draws)
    head = ["attack (20 %)", "K", "rule", "neighbours", "rounds x draws", "mean TPR", "mean FPR"]
    text = (f"# The spectral rule's neighbour count on development Gram matrices\n\n"
            f"Made by `{command_line(__file__)}` from {grams.name} (development cells only: Fashion-MNIST cnn, "
            f"100 clients, bias 0.5, seeds 0-2, 10 rounds).\n\n" + markdown_table(head, table) + "\n")
    print(write_result(results_path("spectral_neighbours.md"), text))


if __name__ == "__main__":
    main()
