"""The command line explains itself (#16): every default in -h, --version, list with descriptions and
parameters, and --set for any nested config field."""

import dataclasses
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import skymask_ray
import skymask_ray.bench
import skymask_ray.simulation
from skymask_ray import cli
from skymask_ray.attacks import ATTACKS
from skymask_ray.config import PRESETS, ExperimentConfig
from skymask_ray.defenses import DEFENSES
from skymask_ray.experiment import build_config

ROOT = Path(__file__).resolve().parents[1]
UNSET = getattr(click.core, "UNSET", None)  # click >= 8.3: an option without a default

# Options that have no default by nature: a file or preset to read, or a list of --set items.
NO_DEFAULT = {"config_file", "preset", "grid_file", "sets"}


def commands():
    """(path, command) for the group and every command under it."""
    yield ["skymask-ray"], cli.main
    for name, cmd in sorted(cli.main.commands.items()):
        yield ["skymask-ray", name], cmd


def shown_options(cmd):
    """(option, help text) of every option -h shows, with the context the command runs in."""
    ctx = click.Context(cmd, info_name=cmd.name, **cmd.context_settings)
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            yield p, (p.get_help_record(ctx) or ("", ""))[1], ctx


def config_value(dotted):
    obj = ExperimentConfig()
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part)  # --pre: a key of defense_params
    return obj


def test_every_option_with_a_default_shows_it():
    checked = 0
    for path, cmd in commands():
        for opt, text, ctx in shown_options(cmd):
            if opt.is_flag or opt.name in NO_DEFAULT or "help" in opt.name or opt.name == "version":
                continue
            assert "[default: " in text, f"{' '.join(path)} {opt.opts[0]}: no default in its help: {text!r}"
            checked += 1
    assert checked > 40


@pytest.mark.parametrize("command", ["run", "bench"])
def test_config_defaults_come_from_experiment_config_and_set_no_click_default(command):
    """An option left to the preset / config file shows ExperimentConfig's value and has no click default
    (which would override a --config file)."""
    cmd = cli.main.commands[command]
    options = {opt.name: (opt, text, ctx) for opt, text, ctx in shown_options(cmd)}
    mapping = {name: dotted for name, dotted in cli.OVERRIDES.items()
               if not (command == "bench" and dotted in cli.BENCH_GRID)}  # bench's axes: below
    assert {"clients", "malicious", "attack", "defense"} <= set(mapping) or command == "bench"
    for name, dotted in mapping.items():
        opt, text, ctx = options[name]
        assert opt.get_default(ctx) in (None, UNSET), f"{opt.opts[0]} sets a click default"
        assert "(from the config)]" in text, f"{opt.opts[0]}: {text!r}"
        value = config_value(dotted)
        if value is not None and not (command == "bench" and name == "rounds"):
            assert f"[default: {cli._yaml_text(value)} (from the config)]" in text, f"{opt.opts[0]}: {text!r}"
    if command == "bench":
        for o in cli.CONFIG_OPTIONS:
            if o.dotted in cli.BENCH_GRID:
                opt, text, ctx = options[o.name]
                shown = ",".join(cli._yaml_text(v) for v in cli.BENCH_GRID[o.dotted])
                assert opt.get_default(ctx) in (None, UNSET) and f"[default: {shown} without --grid]" in text
    # the defaults a newcomer asked for, spelled out
    run_help = CliRunner().invoke(cli.main, ["run", "-h"], terminal_width=200).output
    for flag, default in (("--rounds", "30"), ("--clients", "100"), ("--malicious", "0.2"), ("--attack", "none"),
                          ("--defense", "skymask")):
        line = next(ln for ln in run_help.splitlines() if ln.strip().startswith(flag + " "))
        assert f"[default: {default} (from the config)]" in line


def test_a_config_file_is_not_overridden_by_options_not_given(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, out, **kw):
        seen["cfg"] = cfg
        return Path(out) / "rounds.parquet"

    monkeypatch.setattr(skymask_ray.simulation, "run_experiment", fake_run)
    f = tmp_path / "c.yaml"
    f.write_text("rounds: 7\nclients: 20\nattack: lie\ntrain: {local_lr: 0.3}\n")
    res = CliRunner().invoke(cli.main, ["run", "--config", str(f), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.rounds, cfg.clients, cfg.attack, cfg.train.local_lr) == (7, 20, "lie", 0.3)


def test_version_on_the_group_and_every_command():
    for path, _ in commands():
        res = CliRunner().invoke(cli.main, [*path[1:], "--version"])
        assert res.exit_code == 0, (path, res.output)
        assert res.output.strip() == f"skymask-ray {skymask_ray.__version__}"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_on_the_group_and_every_command(flag):
    for path, cmd in commands():
        res = CliRunner().invoke(cli.main, [*path[1:], flag])
        assert res.exit_code == 0, (path, res.output)
        assert res.output.startswith("Usage:") and "-h, --help" in res.output


def _list_blocks(output):
    """name -> the lines of its entry in `skymask-ray list` (its description line and parameter lines)."""
    blocks, current = {}, None
    for line in output.splitlines():
        m = re.match(r"^  (\S+)\s+(.*)$", line)
        if m and not line.startswith("   "):
            current = m.group(1)
            blocks.setdefault(current, []).append(m.group(2))
        elif line.startswith("   ") and current is not None:
            blocks[current].append(line.strip())
        else:
            current = None
    return blocks


def test_list_describes_every_component_with_its_parameters():
    res = CliRunner().invoke(cli.main, ["list"])
    assert res.exit_code == 0, res.output
    blocks = _list_blocks(res.output)
    for reg in (ATTACKS, DEFENSES):
        for name in reg.names():
            cls = reg.get(name)
            assert name in blocks, f"{name} not listed"
            description = blocks[name][0]
            assert description and description == cli.describe(cls)
            assert description.split()[0].strip(":,.") in (cls.__doc__ or ""), description
            params = " ".join(blocks[name][1:])
            for f in dataclasses.fields(getattr(cls, "Params", None) or object) \
                    if dataclasses.is_dataclass(getattr(cls, "Params", None)) else ():
                assert f"{f.name}=" in params, f"{name}: parameter {f.name} missing from {params!r}"
    assert "z=null" in " ".join(blocks["lie"][1:]) and "spread=0.0" in " ".join(blocks["lie"][1:])
    assert "deviation=unit_vec" in " ".join(blocks["min_max"][1:])
    assert "mask_epochs=20" in " ".join(blocks["skymask"][1:])  # SkyMask's knobs: the config's section
    for name in ("fmnist", "cnn", *PRESETS):
        assert name in blocks
    assert "clients=30" in " ".join(blocks["paper-har"])


def test_set_reaches_nested_config_fields_after_the_named_options():
    ov = cli.overrides_from({"local_lr": 0.3, "rounds": 4, "sets": (
        "train.local_lr=0.1", "skymask.mask_epochs=10", "attack=lie", "attack_params.spread=1",
        "train.grad_clip=null", "skymask.select=bic")})
    cfg = build_config(overrides=ov)
    assert cfg.train.local_lr == 0.1 and cfg.rounds == 4  # --set wins over --local-lr, --rounds stays
    assert cfg.skymask.mask_epochs == 10 and cfg.skymask.select == "bic"
    assert cfg.attack == "lie" and cfg.attack_params == {"spread": 1}
    assert cfg.train.grad_clip is None  # YAML null reaches the config


def test_run_set_through_the_command(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(skymask_ray.simulation, "run_experiment",
                        lambda cfg, out, **kw: seen.setdefault("cfg", cfg) and Path(out))
    res = CliRunner().invoke(cli.main, ["run", "--rounds", "5", "--attack", "lie", "--set", "skymask.mask_epochs=10",
                                        "--set", "attack_params.spread=1", "--set", "train.local_lr=0.1",
                                        "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.rounds, cfg.skymask.mask_epochs, cfg.attack_params, cfg.train.local_lr) == (5, 10, {"spread": 1}, 0.1)


def test_pre_flag_sets_the_pre_aggregator_beside_other_defense_params(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(skymask_ray.simulation, "run_experiment",
                        lambda cfg, out, **kw: seen.setdefault("cfg", cfg) and Path(out))
    res = CliRunner().invoke(cli.main, ["run", "--defense", "krum", "--pre", "bucketing",
                                        "--set", "defense_params.bucket_size=3", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert seen["cfg"].defense_params == {"pre": "bucketing", "bucket_size": 3}
    res = CliRunner().invoke(cli.main, ["run", "--defense", "krum", "--pre", "nope", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "unknown pre-aggregator 'nope'" in res.output and "nnm" in res.output


@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize("item, needle", [
    ("rounds=0", "rounds"),
    ("nokey", "KEY=VALUE"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("train.bogus=1", "unknown config key 'train.bogus'"),
    ("rounds.x=1", "'rounds' is a value"),
    ("skymask.mask_epochs=0", "mask_epochs"),
    ("train.local_lr=[1", "not valid YAML"),
])
def test_set_mistakes_are_one_line(command, item, needle):
    res = CliRunner().invoke(cli.main, [command, "--rounds", "3", "--set", item])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


def test_bench_takes_one_seed_option_with_many_seeds(tmp_path, monkeypatch):
    calls = []

    def fake_grid(cells, out, **kw):
        calls.append(cells)
        return []

    monkeypatch.setattr(skymask_ray.bench, "run_grid", fake_grid)
    monkeypatch.setattr(skymask_ray.bench, "summary_table", lambda rows: "table")
    out = str(tmp_path / "b")
    for flag in ("--seed", "--seeds"):
        res = CliRunner().invoke(cli.main, ["bench", flag, "0,1", "--local-lr", "0.2", "--set",
                                            "skymask.mask_epochs=3", "--out", out])
        assert res.exit_code == 0, res.output
    for cells in calls:
        assert [c.config.seed for c in cells] == [0, 0, 1, 1] and {c.config.clients for c in cells} == {500}
        assert {(c.config.train.local_lr, c.config.skymask.mask_epochs, c.config.rounds) for c in cells} == \
            {(0.2, 3, cli.BENCH_ROUNDS)}
        assert [c.config.defense for c in cells] == ["fedavg", "skymask"] * 2
    bench_help = CliRunner().invoke(cli.main, ["bench", "-h"]).output
    assert "--seed" in bench_help and "--seeds" not in bench_help  # one option; --seeds a hidden alias
    res = CliRunner().invoke(cli.main, ["bench", "--seed", "1", "--seeds", "2", "--out", out])
    assert res.exit_code == 2 and res.output.startswith("error:")


def test_ci_runs_the_readme_test_command():
    """.ci/run runs exactly the README's set-up command for the tests, and the README has two set-up commands."""
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands_ = re.findall(r"```bash\n(.*?)\n```", setup, re.S)
    assert len(commands_) == 2, commands_
    main_job, tests = commands_
    assert "python3 -m venv" in main_job and "skymask-ray bench --clients 500" in main_job
    assert "python3 -m venv" in tests and tests.rstrip().endswith("python3 -m pytest -q")
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [tests.strip()]
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()
