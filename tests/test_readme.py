"""The README is the manual: at most 300 lines, its commands name real options, its Python runs as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pandas as pd
import pytest

from skymask_ray import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def use_commands() -> list[list[str]]:
    """Every ``skymask-ray ...`` command of the README's Use section, as argv (comments and ``;`` split off)."""
    use = README.split("## Use", 1)[1].split("\n## ", 1)[0]
    out = []
    for block in re.findall(r"```bash\n(.*?)\n```", use, re.S):
        for line in block.splitlines():
            for part in line.split("#", 1)[0].split(";"):
                if part.strip().startswith("skymask-ray"):
                    out.append(shlex.split(part)[1:])
    return out


def parse(args: list[str]) -> dict:
    """Parse (not run) a command line as the CLI would; UsageError on an unknown command, option or value."""
    with cli.main.make_context("skymask-ray", list(args)) as ctx:
        sub = cli.main.get_command(ctx, args[0]) if args and not args[0].startswith("-") else None
        if sub is None:
            return ctx.params
        with sub.make_context(args[0], list(args[1:]), parent=ctx) as sub_ctx:
            return sub_ctx.params


def test_the_readme_is_a_manual_of_at_most_300_lines():
    assert len(README.splitlines()) <= 300
    assert "benchmarks/RESULTS.md" in README and "benchmarks/PROTOCOL.md" in README


def test_every_use_command_parses(tmp_path, monkeypatch):
    commands = use_commands()
    assert len(commands) >= 10 and any(c[:1] == ["report"] and "--table" in c for c in commands)
    monkeypatch.chdir(tmp_path)  # the paths the examples read exist, as after running the examples above them
    for args in commands:
        for a in args:
            if a.startswith(("results/", "benchmarks/")) or a.endswith(".yaml"):
                p = tmp_path / a
                p.parent.mkdir(parents=True, exist_ok=True)
                if p.suffix == ".yaml":
                    p.touch()
                else:
                    p.mkdir(exist_ok=True)
        if args[:1] == ["-h"] or "-h" in args:
            continue  # help exits; it has its own tests
        parse(args)
    with pytest.raises(click.UsageError):
        parse(["bench", "--nosuch", "1"])


def test_the_readme_python_examples_run_on_a_committed_study():
    """``pandas.read_parquet`` of a study's rows file and grouping by a config field, as the README shows them."""
    assert 'pandas.read_parquet("benchmarks/results/attack_table.parquet")' in README
    df = pd.read_parquet(ROOT / "benchmarks" / "results" / "attack_table.parquet")
    bias = df["config"].map(lambda c: c["data"]["bias"])
    assert set(bias) == {0.5} and df["cell"].nunique() == 90 and len(df) == 900
