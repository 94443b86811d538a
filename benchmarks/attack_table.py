"""Final accuracy and backdoor success, attack x defense (Fashion-MNIST cnn, 100 clients, bias 0.5).

The attack issue's table (fedavg and skymask under every attack) and, with
``--defenses all``, the defense issue's extension to every defense. Cells
already complete are skipped, so the table can be filled over several runs.

    python benchmarks/attack_table.py [--rounds 30] [--malicious 0.2] [--defenses fedavg,skymask]

Writes benchmarks/results/attack_table.md: one row per attack, per defense
the final accuracy (and backdoor success in brackets where the attack has a trigger).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from skymask_ray.attacks import ATTACKS
from skymask_ray.bench import cell_done, cell_name, expand_grid, run_grid, summarize
from skymask_ray.config import ExperimentConfig
from skymask_ray.defenses import DEFENSES

WRAPPED = {  # attacks that need parameters: fine-grained wrappers over a base attack
    "layer": {"base": "min_max", "layers": ["last"]},
    "parameter": {"base": "min_max", "fraction": 0.1},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--malicious", type=float, default=0.2)
    ap.add_argument("--attacks", default="all")
    ap.add_argument("--defenses", default="fedavg,skymask")
    ap.add_argument("--results-md", default="benchmarks/results/attack_table.md")
    ap.add_argument("--out", default="benchmarks/results/attack_table")
    ap.add_argument("--table-only", action="store_true", help="tabulate finished cells, run nothing")
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
    lines = ["| attack | " + " | ".join(defenses) + " |", "|---" * (len(defenses) + 1) + "|"]
    for attack in attacks:
        vals = []
        for d in defenses:
            cfg, folder = cells[attack, d]
            if not cell_done(cfg, folder):
                vals.append("not run")
                continue
            s = summarize(folder)
            bd = f" ({s['backdoor_success']:.2f})" if s["backdoor_success"] is not None else ""
            vals.append(f"{s['accuracy']:.3f}{bd}")
        lines.append(f"| {attack} | " + " | ".join(vals) + " |")
    table = "\n".join(lines)
    print(table)
    Path(args.results_md).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results_md).write_text(
        f"# Final accuracy (backdoor success), {args.malicious:.0%} malicious, {args.rounds} rounds\n\n"
        "Fashion-MNIST, cnn, 100 clients, bias 0.5, paper settings, seed 0. "
        f"`python benchmarks/attack_table.py --rounds {args.rounds} --defenses {args.defenses}`\n\n" + table + "\n")


if __name__ == "__main__":
    main()
