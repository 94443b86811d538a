"""Final accuracy and backdoor success, attack x defense (Fashion-MNIST cnn, 100 clients, bias 0.5).

The attack issue's table (fedavg and skymask under every attack) and, with
``--defenses all``, the defense issue's extension to every defense. Cells
already complete are skipped, so the table can be filled over several runs.

    python benchmarks/attack_table.py [--rounds 10] [--malicious 0.2] [--defenses fedavg,skymask|all]

Writes benchmarks/results/attack_table.md: one row per attack, per defense
the final accuracy (and backdoor success in brackets where the attack has a trigger).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skymask_ray.attacks import ATTACKS
from skymask_ray.bench import cell_done, cell_name, expand_grid, run_grid, summarize
from skymask_ray.config import ExperimentConfig
from skymask_ray.defenses import DEFENSES

WRAPPED = {  # attacks that need parameters: fine-grained wrappers over a base attack
    "layer": {"base": "min_max", "layers": ["last"]},
    "parameter": {"base": "min_max", "fraction": 0.1},
}


def cell_text(s: dict | None, defense: str) -> str:
    """Final accuracy, backdoor success in brackets, mean TPR/FPR for defenses that select."""
    if s is None:
        return "not run"
    text = f"{s['accuracy']:.3f}"
    if s["backdoor_success"] is not None:
        text += f" ({s['backdoor_success']:.2f})"
    if defense != "fedavg" and s["tpr"] is not None:
        text += f" · {s['tpr']:.2f}/{s['fpr']:.2f}"
    return text


def _short(v: float) -> str:
    """A rate with two decimals, exact zero as 0 (keeps the wide by-defense table readable)."""
    return "0" if v == 0 else f"{v:.2f}"


def _row_accuracy(done: dict[tuple[str, str], dict], attacked: list[str], d: str) -> str | None:
    """The cells ``mean acc | worst acc (attack)`` of defense ``d`` over ``attacked``; None if its row is incomplete."""
    acc = {a: done[a, d]["accuracy"] for a in attacked if (a, d) in done}
    if not attacked or len(acc) < len(attacked):
        return None
    worst = min(acc, key=acc.get)
    return f"{sum(acc.values()) / len(acc):.3f} | {acc[worst]:.3f} ({worst})"


def by_defense_table(done: dict[tuple[str, str], dict], attacks: list[str], defenses: list[str]) -> str:
    """Defense rows x attack columns: accuracy [backdoor success] (mean TPR/FPR), then the mean and the
    worst accuracy over the attacks (``none`` excluded) where the defense's row is complete."""
    attacked = [a for a in attacks if a != "none"]
    lines = ["| defense | " + " | ".join(attacks) + " | mean acc under attack | worst acc (attack) |",
             "|---" * (len(attacks) + 3) + "|"]
    for d in defenses:
        vals = []
        for a in attacks:
            s = done.get((a, d))
            text = "not run" if s is None else f"{s['accuracy']:.3f}"
            if s is not None and s["backdoor_success"] is not None:
                text += f" [{s['backdoor_success']:.2f}]"
            if s is not None and d != "fedavg" and s["tpr"] is not None:
                text += f" ({_short(s['tpr'])}/{_short(s['fpr'])})"
            vals.append(text)
        tail = _row_accuracy(done, attacked, d) or "- | -"
        lines.append(f"| {d} | " + " | ".join(vals) + f" | {tail} |")
    return "\n".join(lines)


def defense_summary_table(done: dict[tuple[str, str], dict], attacks: list[str], defenses: list[str]) -> str:
    """Per defense over the attacks (``none`` excluded): mean and worst final accuracy, mean TPR and FPR,
    and the highest backdoor success; only for defenses whose row is complete."""
    attacked = [a for a in attacks if a != "none"]
    lines = ["| defense | mean acc | worst acc (attack) | mean TPR | mean FPR | highest backdoor success (attack) |",
             "|---|---|---|---|---|---|"]
    for d in defenses:
        acc = _row_accuracy(done, attacked, d)
        if acc is None:
            continue
        cells = {a: done[a, d] for a in attacked}
        rates = [(c["tpr"], c["fpr"]) for c in cells.values() if c["tpr"] is not None]
        tpr = fpr = "-"
        if rates and d != "fedavg":
            tpr, fpr = (f"{sum(r[i] for r in rates) / len(rates):.2f}" for i in (0, 1))
        bd = {a: c["backdoor_success"] for a, c in cells.items() if c["backdoor_success"] is not None}
        top = max(bd, key=bd.get) if bd else None
        bd_text = f"{bd[top]:.2f} ({top})" if top else "-"
        lines.append(f"| {d} | {acc} | {tpr} | {fpr} | {bd_text} |")
    return "\n".join(lines)


def _harm(fed: dict, base_acc: float) -> str:
    """FedAvg's accuracy change vs the no-attack run, in points, and backdoor success where measured."""
    text = f"{100 * (fed['accuracy'] - base_acc):+.1f} pts"
    if fed["backdoor_success"] is not None:
        text += f", backdoor {fed['backdoor_success']:.2f}"
    return text


def cell_parser(doc: str, attacks: str, defenses: str, results_md: str) -> argparse.ArgumentParser:
    """The options every attack x defense table script shares (cells under --out, table in --results-md)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--attacks", default=attacks)
    ap.add_argument("--defenses", default=defenses)
    ap.add_argument("--out", default="benchmarks/results/attack_table")
    ap.add_argument("--results-md", default=results_md)
    ap.add_argument("--table-only", action="store_true", help="tabulate finished cells, run nothing")
    return ap


def main() -> None:
    ap = cell_parser(__doc__, "all", "fedavg,skymask", "benchmarks/results/attack_table.md")
    ap.add_argument("--malicious", type=float, default=0.2)
    args = ap.parse_args()
    attacks = ATTACKS.names() if args.attacks == "all" else args.attacks.split(",")
    defenses = DEFENSES.names() if args.defenses == "all" else args.defenses.split(",")
    out = Path(args.out)
    cells: dict[tuple[str, str], tuple[ExperimentConfig, Path]] = {}
    for attack in attacks:
        base = {"rounds": args.rounds, "attack_params": WRAPPED.get(attack, {})}
        grid = {"attack": [attack], "defense": defenses, "malicious_fraction": [args.malicious]}
        if not args.table_only:
            run_grid("paper-fmnist", None, base, grid, out, echo=print)
        for cfg in expand_grid("paper-fmnist", None, base, grid):
            cells[attack, cfg.defense] = cfg, out / cell_name(cfg)
    done = {key: summarize(folder) for key, (cfg, folder) in cells.items() if cell_done(cfg, folder)}
    base_acc = done["none", "fedavg"]["accuracy"] if ("none", "fedavg") in done else None
    lines = ["| attack | " + " | ".join(defenses) + " | fedavg change vs no attack |",
             "|---" * (len(defenses) + 2) + "|"]
    for attack in attacks:
        vals = [cell_text(done.get((attack, d)), d) for d in defenses]
        fed = done.get((attack, "fedavg"))
        delta = "-" if fed is None or base_acc is None or attack == "none" else _harm(fed, base_acc)
        lines.append(f"| {attack} | " + " | ".join(vals) + f" | {delta} |")
    table = "\n".join(lines)
    print(table)
    Path(args.results_md).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results_md).write_text(
        f"# Final accuracy (backdoor success) · mean TPR/FPR, {args.malicious:.0%} malicious, {args.rounds} rounds\n\n"
        "Fashion-MNIST, cnn, 100 clients, bias 0.5, paper settings, seed 0. Each cell: accuracy after the last "
        "round, backdoor success on triggered non-target test images in brackets (backdoor attacks), and the "
        "mean TPR/FPR over rounds for defenses that select (positive = malicious client rejected). "
        f"`python {' '.join(a for a in sys.argv if a != '--table-only')}`\n\n" + table + "\n\n"
        "## By defense\n\nThe same cells per defense: accuracy [backdoor success] (mean TPR/FPR), with the "
        "mean and the worst accuracy over the attacks (no-attack run excluded) once a row is complete.\n\n"
        + by_defense_table(done, attacks, defenses) + "\n\n## Summary per defense\n\nOver the attacks "
        "(no-attack run excluded), for the defenses whose row is complete.\n\n"
        + defense_summary_table(done, attacks, defenses) + "\n")


if __name__ == "__main__":
    main()
