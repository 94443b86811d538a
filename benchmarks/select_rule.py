"""SkyMask's selection rule side by side: gmm2 (the paper) vs silhouette, spectral (and bic), distinct attackers, 3 seeds.

Fashion-MNIST cnn, 100 clients, bias 0.5, paper settings. The grid (rounds,
seeds, fractions, attacks, the attacks' ``spread``) is
``benchmarks/studies/select_rule.yaml``; each seed's cells run before the next
seed's, and cells already complete are skipped, so the script resumes. Besides
the grid: no attack with no malicious client (skymask under gmm2, bic and
silhouette and spectral, and FedAvg, the accuracy reference); bic runs there only: without
an attack it already splits most rounds, so its targets fail. Every cell is ``skymask-ray run --preset
paper-fmnist --attack A --malicious F --defense skymask --set skymask.select=RULE
--set attack_params.spread=1 --rounds R --seed S``.

    python -m benchmarks.select_rule [--rounds 10] [--seeds 0,1,2] [--table-only]

Writes benchmarks/results/select_rule.md: per condition and rule, final accuracy,
mean TPR and FPR over rounds (mean ± sd over seeds), and the rounds where the rule
kept one cluster (everyone accepted); the issue's targets (no attack: FPR <= 0.05; attacked:
TPR >= 0.95, FPR <= 0.05, accuracy within 2 points of attack-free FedAvg) are
checked per rule.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import (cell_parser, command_line, group_cells, load_study, markdown_table, mean_sd, run_cells,
                               write_result)

STUDY = "select_rule"
RULES_KEY = "skymask.select"
NONE_RULES = ["gmm2", "bic", "silhouette", "spectral"]  # rules run without an attack


def seed_jobs(study, rounds: int, seed: int) -> list[tuple[dict[str, Any], dict[str, list[Any]]]]:
    """The (base, grid) jobs of one seed: no attack first, then each attack with its parameters."""
    base = {**study.base, "rounds": rounds}
    jobs = [(base, {"seed": [seed], "malicious_fraction": [0.0], "attack": ["none"], "defense": ["skymask"],
                    RULES_KEY: NONE_RULES}),
            (base, {"seed": [seed], "malicious_fraction": [0.0], "attack": ["none"], "defense": ["fedavg"]})]
    for attack in study.grid["attack"]:
        grid = {**study.grid, "seed": [seed], "attack": [attack]}
        jobs.append(({**base, "attack_params": study.attack_params.get(attack, {})}, grid))
    return jobs


def main() -> None:
    study = load_study(STUDY)
    ap = cell_parser(__doc__, __file__, study, "select_rule", "select_rule.md", lists=("seed",))
    args = ap.parse_args()
    jobs = [job for s in args.seed for job in seed_jobs(study, args.rounds, s)]
    by = group_cells(run_cells(study.preset, jobs, args.out, not args.table_only),
                     lambda c: (c.attack, c.malicious_fraction, c.skymask.select if c.defense == "skymask" else "fedavg"))
    ref = [s["accuracy"] for s in by.get(("none", 0.0, "fedavg"), [])]
    ref_acc = statistics.fmean(ref) if ref else None
    conditions = [("none", 0.0)] + [(a, f) for f in sorted(study.grid["malicious_fraction"]) for a in study.grid["attack"]]
    rows = []
    for attack, frac in conditions:
        for rule in NONE_RULES if attack == "none" else study.grid[RULES_KEY]:
            cells = by.get((attack, frac, rule), [])
            tpr = [s["tpr"] for s in cells if s["tpr"] is not None]
            fpr = [s["fpr"] for s in cells if s["fpr"] is not None]
            acc = [s["accuracy"] for s in cells]
            one = sum(s["single_component_rounds"] for s in cells)
            total = sum(s["rounds"] for s in cells)
            met = "-"
            if cells and ref_acc is not None:
                ok = bool(fpr) and statistics.fmean(fpr) <= 0.05
                if attack != "none":
                    ok = ok and bool(tpr) and statistics.fmean(tpr) >= 0.95 and statistics.fmean(acc) >= ref_acc - 0.02
                met = "yes" if ok else "no"
            rows.append([attack, f"{frac:.0%}", rule, len(cells), mean_sd(acc), mean_sd(tpr), mean_sd(fpr),
                         f"{one}/{total}" if cells else "-", met])
    table = markdown_table(["attack", "malicious", "rule", "seeds", "final acc", "mean TPR", "mean FPR",
                            "one-cluster rounds", "targets met"], rows)
    ref_text = mean_sd(ref) if ref else "not run"
    text = (f"# SkyMask selection rule: gmm2 (paper) vs silhouette, spectral and bic, {args.rounds} rounds, seeds "
            f"{','.join(map(str, args.seed))}\n\n"
            "Fashion-MNIST, cnn, 100 clients, bias 0.5, paper settings; attackers distinct "
            "(`attack_params.spread` 1: each attacker adds its own noise of one benign std per coordinate). "
            "'none' has no malicious client (FPR over all 100). Per run: accuracy after the last round and "
            "TPR/FPR averaged over rounds (positive = rejected); then mean ± sd over seeds. "
            f"Attack-free FedAvg (the accuracy reference): {ref_text}. Targets: no attack FPR <= 0.05; attacked "
            "TPR >= 0.95, FPR <= 0.05 and accuracy within 2 points of the reference.\n"
            f"`{command_line(__file__)}`\n\n" + table + "\n")
    print(text)
    write_result(args.results_md, text)


if __name__ == "__main__":
    main()
