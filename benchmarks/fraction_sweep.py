"""Malicious-fraction sweep: final accuracy and detection of fedavg, fltrust, flame and skymask under min_max and lie.

Fashion-MNIST cnn, 100 clients, bias 0.5, paper settings. The grid (rounds,
fractions, attacks, defenses, seeds) is ``benchmarks/studies/fraction_sweep.yaml``;
the options override it. With identical attackers (the default) the cells are
the attack table's (same folder, same config hashes), so cells already run for
either table are reused. ``--spread S`` gives every attacker its own noise of S
benign stds per coordinate and keeps its cells and table apart
(``fraction_sweep_spread<S>/``, ``fraction_sweep_spread<S>.md``). Each seed's
cells run before the next seed's; cells already complete are skipped, so the
script resumes. Every cell is ``skymask-ray run --preset paper-fmnist --attack A
--malicious F --defense D --rounds R --seed S [--set attack_params.spread=S]``.

    python -m benchmarks.fraction_sweep [--rounds 10] [--fractions 0.2,0.8,0.4,0.6] [--seeds 0] [--spread 1] [--table-only]

Writes benchmarks/results/fraction_sweep.md: per attack, one row per fraction,
per defense the final accuracy (mean ± sd over seeds) and mean TPR/FPR.
"""

from __future__ import annotations

from benchmarks.attack_table import seeds_text
from benchmarks.common import (add_spread_option, apply_spread, attackers_text, cell_parser, command_line, group_cells,
                               load_study, markdown_table, run_cells, spread_params, write_result)

STUDY = "fraction_sweep"


def main() -> None:
    study = load_study(STUDY)
    ap = cell_parser(__doc__, __file__, study, "attack_table", "fraction_sweep.md",
                     lists=("malicious_fraction", "attack", "defense", "seed"))
    add_spread_option(ap)
    args = ap.parse_args()
    apply_spread(ap, args, STUDY)
    base = {**study.base, "rounds": args.rounds, **spread_params(args.spread)}
    jobs = [(base, {**study.grid, "malicious_fraction": args.malicious_fraction, "attack": args.attack,
                    "defense": args.defense, "seed": [seed]}) for seed in args.seed]
    done = group_cells(run_cells(study.preset, jobs, args.out, not args.table_only),
                       lambda c: (c.attack, c.malicious_fraction, c.defense))
    parts = []
    for attack in args.attack:
        rows = [[f"{f:.0%}", *(seeds_text(done.get((attack, f, d), []), d, len(args.seed)) for d in args.defense)]
                for f in sorted(args.malicious_fraction)]
        parts.append(f"## {attack}\n\n" + markdown_table(["malicious", *args.defense], rows))
    text = "\n\n".join(parts)
    print(text)
    seeds = ",".join(map(str, args.seed))
    write_result(
        args.results_md,
        f"# Malicious-fraction sweep, {args.rounds} rounds, seed{'s' if len(args.seed) > 1 else ''} {seeds}\n\n"
        f"Fashion-MNIST, cnn, 100 clients, bias 0.5, paper settings; {attackers_text(args.spread)}. Each cell: "
        "accuracy after the last round (mean ± sd over seeds) · mean TPR/FPR over rounds and seeds (positive = "
        f"malicious client rejected; fedavg rejects nobody). `{command_line(__file__)}`\n\n" + text + "\n")


if __name__ == "__main__":
    main()
