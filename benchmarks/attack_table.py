"""Final accuracy and backdoor success, attack x defense (Fashion-MNIST cnn, 100 clients, bias 0.5).

The attack issue's table (fedavg and skymask under every attack) and, with
``--defenses all``, the defense issue's extension to every defense. The grid
(rounds, malicious fraction, attacks, defenses, the wrapped attacks'
parameters) is ``benchmarks/studies/attack_table.yaml``; the options override
it (``--attacks all`` / ``--defenses all``: every registered one). Cells
already complete are skipped, so the table can be filled over several runs.

    python -m benchmarks.attack_table [--rounds 10] [--malicious 0.2] [--defenses fedavg,skymask|all] [--seeds 0,1,2] [--table-only]

Writes benchmarks/results/attack_table.md: one row per attack, per defense
the final accuracy (and backdoor success in brackets where the attack has a trigger);
with ``--seeds``, each seed's cells run before the next seed's and a cell is the
accuracy's mean ± sd over its seeds and the means of the rest.
"""

from __future__ import annotations

import statistics
from typing import Any

from skymask_ray.attacks import ATTACKS
from skymask_ray.defenses import DEFENSES

from benchmarks.common import (cell_parser, command_line, group_cells, load_study, markdown_table, mean_sd, run_cells,
                               write_result)

STUDY = "attack_table"


def rates(s: dict, defense: str) -> tuple[float, float] | None:
    """Mean TPR and FPR of a cell whose defense selects (fedavg rejects nobody); None otherwise."""
    return None if defense == "fedavg" or s["tpr"] is None else (s["tpr"], s["fpr"])


def cell_text(s: dict | None, defense: str, accuracy: str | None = None) -> str:
    """Final accuracy (or the text ``accuracy``), backdoor success in brackets, mean TPR/FPR for defenses
    that select."""
    if s is None:
        return "not run"
    text = accuracy or f"{s['accuracy']:.3f}"
    if s["backdoor_success"] is not None:
        text += f" ({s['backdoor_success']:.2f})"
    if (r := rates(s, defense)) is not None:
        text += f" · {r[0]:.2f}/{r[1]:.2f}"
    return text


def mean_cell(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell's seeds as one summary: accuracy, backdoor success, TPR and FPR each averaged over the seeds
    that have it (None where none has it), so that the tables over one seed read several unchanged."""
    def avg(key: str) -> float | None:
        vals = [c[key] for c in cells if c[key] is not None]
        return statistics.fmean(vals) if vals else None

    return {key: avg(key) for key in ("accuracy", "backdoor_success", "tpr", "fpr")}


def seeds_text(cells: list[dict[str, Any]], defense: str, seeds: int) -> str:
    """One table cell over its seeds: as :func:`cell_text`, the accuracy as mean ± sd and the rest as means,
    with the count where fewer seeds than the ``seeds`` asked are complete."""
    if not cells:
        return "not run"
    text = cell_text(mean_cell(cells), defense, mean_sd([c["accuracy"] for c in cells]))
    return text + (f" ({len(cells)} of {seeds} seeds)" if len(cells) < seeds else "")


def _short(v: float) -> str:
    """A rate with two decimals, exact zero as 0 (keeps the wide by-defense table readable)."""
    return "0" if v == 0 else f"{v:.2f}"


def _row_accuracy(done: dict[tuple[str, str], dict], attacked: list[str], d: str) -> list[str] | None:
    """The cells ``mean acc`` and ``worst acc (attack)`` of defense ``d`` over ``attacked``; None if incomplete."""
    acc = {a: done[a, d]["accuracy"] for a in attacked if (a, d) in done}
    if not attacked or len(acc) < len(attacked):
        return None
    worst = min(acc, key=acc.get)
    return [f"{sum(acc.values()) / len(acc):.3f}", f"{acc[worst]:.3f} ({worst})"]


def by_defense_table(done: dict[tuple[str, str], dict], attacks: list[str], defenses: list[str]) -> str:
    """Defense rows x attack columns: accuracy [backdoor success] (mean TPR/FPR), then the mean and the
    worst accuracy over the attacks (``none`` excluded) where the defense's row is complete."""
    attacked = [a for a in attacks if a != "none"]
    rows = []
    for d in defenses:
        vals = []
        for a in attacks:
            s = done.get((a, d))
            text = "not run" if s is None else f"{s['accuracy']:.3f}"
            if s is not None and s["backdoor_success"] is not None:
                text += f" [{s['backdoor_success']:.2f}]"
            if s is not None and (r := rates(s, d)) is not None:
                text += f" ({_short(r[0])}/{_short(r[1])})"
            vals.append(text)
        rows.append([d, *vals, *(_row_accuracy(done, attacked, d) or ["-", "-"])])
    return markdown_table(["defense", *attacks, "mean acc under attack", "worst acc (attack)"], rows)


def defense_summary_table(done: dict[tuple[str, str], dict], attacks: list[str], defenses: list[str]) -> str:
    """Per defense over the attacks (``none`` excluded): mean and worst final accuracy, mean TPR and FPR,
    and the highest backdoor success; only for defenses whose row is complete."""
    attacked = [a for a in attacks if a != "none"]
    rows = []
    for d in defenses:
        acc = _row_accuracy(done, attacked, d)
        if acc is None:
            continue
        cells = {a: done[a, d] for a in attacked}
        selected = [r for c in cells.values() if (r := rates(c, d)) is not None]
        tpr = fpr = "-"
        if selected:
            tpr, fpr = (f"{sum(r[i] for r in selected) / len(selected):.2f}" for i in (0, 1))
        bd = {a: c["backdoor_success"] for a, c in cells.items() if c["backdoor_success"] is not None}
        top = max(bd, key=bd.get) if bd else None
        rows.append([d, *acc, tpr, fpr, f"{bd[top]:.2f} ({top})" if top else "-"])
    return markdown_table(["defense", "mean acc", "worst acc (attack)", "mean TPR", "mean FPR",
                           "highest backdoor success (attack)"], rows)


def _harm(fed: dict, base_acc: float) -> str:
    """FedAvg's accuracy change vs the no-attack run, in points, and backdoor success where measured."""
    text = f"{100 * (fed['accuracy'] - base_acc):+.1f} pts"
    if fed["backdoor_success"] is not None:
        text += f", backdoor {fed['backdoor_success']:.2f}"
    return text


def main() -> None:
    study = load_study(STUDY)
    ap = cell_parser(__doc__, __file__, study, "attack_table", "attack_table.md", lists=("attack", "defense", "seed"))
    ap.add_argument("--malicious", type=float, default=study.grid["malicious_fraction"][0])
    args = ap.parse_args()
    attacks = ATTACKS.names() if args.attack == ["all"] else args.attack
    defenses = DEFENSES.names() if args.defense == ["all"] else args.defense
    jobs = [({**study.base, "rounds": args.rounds, "attack_params": study.attack_params.get(attack, {})},
             {**study.grid, "attack": [attack], "defense": defenses, "malicious_fraction": [args.malicious],
              "seed": [seed]})
            for seed in args.seed for attack in attacks]
    runs = group_cells(run_cells(study.preset, jobs, args.out, not args.table_only), lambda c: (c.attack, c.defense))
    done = {key: mean_cell(cells) for key, cells in runs.items()}
    base_acc = done["none", "fedavg"]["accuracy"] if ("none", "fedavg") in done else None
    rows = []
    for attack in attacks:
        fed = done.get((attack, "fedavg"))
        delta = "-" if fed is None or base_acc is None or attack == "none" else _harm(fed, base_acc)
        rows.append([attack, *(seeds_text(runs.get((attack, d), []), d, len(args.seed)) for d in defenses), delta])
    table = markdown_table(["attack", *defenses, "fedavg change vs no attack"], rows)
    print(table)
    several = len(args.seed) > 1
    write_result(
        args.results_md,
        f"# Final accuracy (backdoor success) · mean TPR/FPR, {args.malicious:.0%} malicious, {args.rounds} rounds\n\n"
        f"Fashion-MNIST, cnn, 100 clients, bias 0.5, paper settings, seed{'s' if several else ''} "
        f"{','.join(map(str, args.seed))}. Each cell: accuracy after the last "
        "round" + (" (mean ± sd over seeds)" if several else "") + ", backdoor success on triggered non-target "
        "test images in brackets (backdoor attacks), and the mean TPR/FPR over rounds" + (" and seeds" if several
        else "") + " for defenses that select (positive = malicious client rejected). "
        f"`{command_line(__file__)}`\n\n" + table + "\n\n"
        "## By defense\n\nThe same cells per defense" + (" (means over seeds)" if several else "") + ": accuracy "
        "[backdoor success] (mean TPR/FPR), with the mean and the worst accuracy over the attacks (no-attack run "
        "excluded) once a row is complete.\n\n"
        + by_defense_table(done, attacks, defenses) + "\n\n## Summary per defense\n\nOver the attacks "
        "(no-attack run excluded), for the defenses whose row is complete.\n\n"
        + defense_summary_table(done, attacks, defenses) + "\n")


if __name__ == "__main__":
    main()
