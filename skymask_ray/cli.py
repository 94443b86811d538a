"""The ``skymask-ray`` command: run, bench, list, report.

User mistakes (ConfigError, missing data) become one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from .config import PRESETS, set_dotted
from .experiment import build_config
from .errors import UserError
from .progress import progress, round_line, setup_lines
from .storage import atomic_write_text


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User mistakes and actionable run failures: one line on stderr, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {' '.join(str(exc).split())}", err=True)
            sys.exit(2)

    return wrapper


def experiment_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by ``run`` and ``bench`` (all optional: preset/config/defaults fill in)."""
    opts = [
        click.option("--config", "config_file", type=click.Path(), help="YAML config file."),
        click.option("--preset", type=click.Choice(sorted(PRESETS)), help="The paper's settings for a dataset."),
        click.option("--dataset", help="fmnist (default), mnist, cifar10, har, digits, synthetic."),
        click.option("--model", help="cnn, mlp, lr, resnet20 or a registered model."),
        click.option("--rounds", type=int),
        click.option("--seed", type=int),
        click.option("--partition", type=click.Choice(["bias", "dirichlet", "iid", "subject"])),
        click.option("--bias", type=float, help="Non-IID bias b of the paper's split (1/C = IID)."),
        click.option("--alpha", type=float, help="Dirichlet concentration (partition dirichlet)."),
        click.option("--local-epochs", type=int),
        click.option("--local-steps", type=int),
        click.option("--batch-size", type=int),
        click.option("--local-lr", type=float),
        click.option("--global-lr", type=float),
        click.option("--grad-clip", type=float, help="Element-wise gradient clamp (paper: 0.01)."),
        click.option("--server-budget", type=click.Choice(["matched", "epoch"])),
        click.option("--root-size", type=int),
        click.option("--root-p", type=float, help="Fraction of label 1 in the root set."),
        click.option("--samples-per-client", type=int,
                     help="Samples per client: a cap, or drawn with replacement when clients x S exceeds the data."),
        click.option("--cohort", type=int, help="Clients sampled per round (default: all clients, every round)."),
        click.option("--malicious-sampling", type=click.Choice(["pool", "fixed"]),
                     help="pool: attackers live in the population and are sampled like anyone; fixed: every "
                          "cohort holds round(cohort x fraction) attackers. [default: pool]"),
        click.option("--dropout", type=float, help="Probability that a sampled client fails to report. [default: 0]"),
        click.option("--declared-f", type=int,
                     help="f given to f-based defenses (default: round(cohort x malicious fraction))."),
        click.option("--client-exec", type=click.Choice(["auto", "sequential", "vmap"])),
        click.option("--mask-shards", type=int, help="Parameter shards of SkyMask's mask trainer."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"])),
        click.option("--address", help="Ray cluster address (default: local, or $RAY_ADDRESS)."),
        click.option("--connect-timeout", type=float, help="Seconds to wait for the cluster at --address (default 30)."),
        click.option("--workers", type=int, help="Client-pool actors (default: one per CPU core)."),
        click.option("--data-dir", type=str, help="Directory holding the dataset files."),
        click.option("--eval-every", type=int),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


_OVERRIDES = {
    "dataset": "data.dataset", "model": "model", "rounds": "rounds", "seed": "seed", "partition": "data.partition",
    "bias": "data.bias", "alpha": "data.alpha", "local_epochs": "train.local_epochs",
    "local_steps": "train.local_steps", "batch_size": "train.batch_size", "local_lr": "train.local_lr",
    "global_lr": "train.global_lr", "grad_clip": "train.grad_clip", "server_budget": "train.server_budget",
    "cohort": "cohort", "malicious_sampling": "malicious_sampling", "dropout": "dropout",
    "declared_f": "declared_f", "root_size": "data.root_size", "root_p": "data.root_p", "samples_per_client": "data.samples_per_client",
    "client_exec": "train.client_exec", "mask_shards": "skymask.shards", "device": "device", "address": "address",
    "connect_timeout": "connect_timeout_s",
    "workers": "workers", "data_dir": "data.data_dir", "eval_every": "eval_every",
}


def overrides_from(kw: dict[str, Any]) -> dict[str, Any]:
    """Nested config overrides from CLI keyword arguments (None = not given)."""
    out: dict[str, Any] = {}
    for key, dotted in _OVERRIDES.items():
        set_dotted(out, dotted, kw.get(key))
    return out


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """skymask-ray: Byzantine-robust federated learning at scale on Ray, around SkyMask."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@experiment_options
@click.option("--clients", type=int)
@click.option("--malicious", type=float, help="Malicious fraction in [0, 1).")
@click.option("--attack")
@click.option("--defense")
@click.option("--out", type=click.Path(), default="results/run", show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its checkpoint (or start it if OUT is empty).")
@click.option("--overwrite", is_flag=True, help="Replace the run in OUT (its files are replaced once round 1 is done).")
@_fail_cleanly
def run(config_file, preset, clients, malicious, attack, defense, out, resume, overwrite, **kw) -> None:
    """Run one experiment; writes OUT/rounds.parquet (and OUT/_config.yaml, OUT/_state/ for --resume)."""
    from .simulation import run_experiment

    ov = overrides_from(kw)
    set_dotted(ov, "clients", clients)
    set_dotted(ov, "malicious_fraction", malicious)
    set_dotted(ov, "attack", attack)
    set_dotted(ov, "defense", defense)
    cfg = build_config(preset, config_file, ov)
    with progress(cfg.rounds, "rounds") as bar:

        def on_round(row: dict[str, Any]) -> None:
            bar.write(round_line(row))
            bar.n = row["round"]
            bar.refresh()

        path = run_experiment(cfg, out, resume=resume, on_round=on_round, overwrite=overwrite,
                              on_setup=setup_lines(bar))
    click.echo(f"wrote {path}")


def _csv(kind: Callable[[str], Any]) -> Callable[..., list[Any] | None]:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list[Any] | None:
        if value is None:
            return None
        try:
            return [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list, got {value!r}") from None

    return parse


@main.command()
@experiment_options
@click.option("--clients", callback=_csv(int), help="Comma-separated client counts, e.g. 100,500.")
@click.option("--malicious", callback=_csv(float), help="Comma-separated malicious fractions, e.g. 0.2,0.8.")
@click.option("--attack", "attacks", callback=_csv(str), help="Comma-separated attacks.")
@click.option("--defense", "defenses", callback=_csv(str), help="Comma-separated defenses.")
@click.option("--seeds", callback=_csv(int), help="Comma-separated seeds.")
@click.option("--grid", "grid_file", type=click.Path(), help="Study file (preset, base, grid); CLI lists override it.")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Cells run at once as Ray tasks.")
@click.option("--out", type=click.Path(), default="results/bench", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace cells whose folders hold another config's results.")
@_fail_cleanly
def bench(config_file, preset, clients, malicious, attacks, defenses, seeds, grid_file, concurrency, out, overwrite,
          **kw) -> None:
    """Run a grid of experiments (clients x malicious x attack x defense x seed), resumable, with a summary.

    Without --grid: defaults to 500 clients, 20 % malicious, min_max against skymask, 2 rounds.
    """
    from .bench import STUDY_SUMMARY, load_grid_file, run_grid, summary_table

    base: dict = {}
    grid: dict = {}
    if grid_file is not None:
        file_preset, base, grid = load_grid_file(grid_file)
        preset = preset or file_preset
    base = {**base, **overrides_from(kw)}
    if grid_file is None and kw.get("rounds") is None and config_file is None:
        base["rounds"] = 2
    for key, given, default in (("clients", clients, [500]), ("malicious_fraction", malicious, [0.2]),
                                ("attack", attacks, ["min_max"]), ("defense", defenses, ["skymask"]),
                                ("seed", seeds, None)):
        if given is not None:
            grid[key] = given
        elif key not in grid and default is not None and grid_file is None:
            grid[key] = default
    rows = run_grid(preset, config_file, base, grid, Path(out), echo=click.echo, concurrency=concurrency,
                    progress=progress, overwrite=overwrite)
    table = summary_table(rows)
    atomic_write_text(Path(out, STUDY_SUMMARY), table + "\n")
    click.echo(table)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", type=click.Path(), default="results/report", show_default=True)
@click.option("--round", "round_", type=int, help="Round of the mask PCA scatter (default: last).")
def report(inputs, out, round_) -> None:
    """Plots (PNG) and a Markdown summary from result folders or rounds.parquet files."""
    from .report import make_report

    try:
        paths = make_report([Path(p) for p in inputs], Path(out), round=round_)
    except (ValueError, FileNotFoundError, UserError) as exc:
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    for p in paths:
        click.echo(f"wrote {p}")


@main.command(name="list")
def list_components() -> None:
    """Print the registered datasets, models, attacks, defenses and presets."""
    from .attacks import ATTACKS
    from .data import DATASETS
    from .defenses import DEFENSES
    from .models import MODELS

    for title, reg in (("datasets", DATASETS), ("models", MODELS), ("attacks", ATTACKS), ("defenses", DEFENSES)):
        click.echo(f"{title}: {', '.join(reg.names())}")
    click.echo(f"presets: {', '.join(sorted(PRESETS))}")


if __name__ == "__main__":
    main()
