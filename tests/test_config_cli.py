"""Bad input never yields a traceback: one-line errors from config and CLI."""

import pytest
from click.testing import CliRunner

from skymask_ray.cli import main
from skymask_ray.config import PRESETS, config_hash, save_config
from skymask_ray.experiment import build_config
from skymask_ray.errors import ConfigError


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"clients": 1}, "clients must be"),
        ({"malicious_fraction": 1.0}, "malicious_fraction"),
        ({"malicious_fraction": -0.1}, "malicious_fraction"),
        ({"rounds": 0}, "rounds"),
        ({"attack": "nope"}, "unknown attack 'nope'"),
        ({"defense": "nope"}, "unknown defense 'nope'"),
        ({"model": "nope"}, "unknown model"),
        ({"data": {"dataset": "nope"}}, "unknown dataset"),
        ({"data": {"bias": 1.5}}, "bias"),
        ({"data": {"data_dir": "/does/not/exist"}}, "does not exist"),
        ({"train": {"batch_size": 0}}, "batch_size"),
        ({"skymask": {"threshold": 1.0}}, "threshold"),
        ({"bogus": 1}, "unknown config key 'bogus'"),
        ({"train": {"bogus": 1}}, "unknown config key train.'bogus'"),
        ({"attack": "min_max", "attack_params": {"deviation": "x"}}, "deviation"),
        ({"attack": "lie", "attack_params": {"nope": 1}}, "unknown parameter"),
    ],
)
def test_bad_config_values_raise_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_config(overrides=overrides)
    assert "\n" not in str(info.value)


def test_presets_validate_and_yaml_round_trip(tmp_path):
    for name in PRESETS:
        cfg = build_config(preset=name)
        assert cfg.train.local_lr == 0.5
    cfg = build_config(preset="paper-fmnist", overrides={"clients": 40, "attack": "lie"})
    save_config(cfg, tmp_path / "c.yaml")
    again = build_config(file=tmp_path / "c.yaml")
    assert again == cfg and config_hash(again) == config_hash(cfg)


def test_num_malicious_rounds():
    assert build_config(overrides={"clients": 10, "malicious_fraction": 0.25}).num_malicious == 2
    assert build_config(overrides={"clients": 500, "malicious_fraction": 0.8}).num_malicious == 400


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--clients", "1"],
        ["run", "--attack", "foo"],
        ["run", "--malicious", "1.2"],
        ["run", "--rounds", "0"],
        ["run", "--data-dir", "/no/such/dir"],
        ["run", "--config", "/no/such.yaml"],
        ["bench", "--clients", "100,1"],
        ["bench", "--defense", "fedavg,nah"],
    ],
)
def test_cli_user_mistakes_are_one_line(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")


def test_cli_bad_yaml_is_one_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("clients: [unclosed\n")
    res = CliRunner().invoke(main, ["run", "--config", str(f)])
    assert res.exit_code == 2 and res.output.startswith("error: config file")


def test_cli_list_names_every_family():
    res = CliRunner().invoke(main, ["list"])
    assert res.exit_code == 0
    for word in ("fmnist", "cnn", "min_max", "skymask", "fltrust", "paper-fmnist"):
        assert word in res.output


def test_equal_component_parameters_hash_alike_whatever_their_number_type():
    """``--set attack_params.spread=1`` (an int) and a grid's ``spread: 1.0`` are one config: a run
    made one way is resumed, and a bench cell reused, the other way; another value is another config."""
    def h(attack: str, params: dict, defense_params: dict | None = None) -> str:
        return config_hash(build_config(overrides={"attack": attack, "attack_params": params,
                                                   "defense": "centered_clipping",
                                                   "defense_params": defense_params or {}}))

    assert h("min_max", {"spread": 1}) == h("min_max", {"spread": 1.0})
    assert h("min_max", {"spread": 1}) != h("min_max", {"spread": 2})
    assert h("parameter", {"base": "min_max", "fraction": 1, "base_params": {"spread": 1}}) == \
        h("parameter", {"base": "min_max", "fraction": 1.0, "base_params": {"spread": 1.0}})
    assert h("none", {}, {"tau": 2}) == h("none", {}, {"tau": 2.0}) != h("none", {}, {"tau": 3})


def test_an_exponent_without_a_dot_is_a_float_in_set_only_and_config_files(tmp_path):
    from skymask_ray.cli import apply_sets
    from skymask_ray.config import load_yaml_mapping
    from skymask_ray.study import parse_only

    overrides = apply_sets({}, ["skymask.mask_grad_clip=1e-07", "train.local_lr=5E-1", "attack=1e5x"])
    assert overrides["skymask"]["mask_grad_clip"] == 1e-07 and overrides["train"]["local_lr"] == 0.5
    assert overrides["attack"] == "1e5x"  # not a number: still a string
    assert build_config(overrides={"skymask": {"mask_grad_clip": overrides["skymask"]["mask_grad_clip"]}}
                        ).skymask.mask_grad_clip == 1e-07
    assert parse_only(["skymask.mask_grad_clip=1e-07,1e-5"]) == {"skymask.mask_grad_clip": [1e-07, 1e-05]}
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("skymask: {mask_lr: 1e7}\nrounds: 3\n")
    assert load_yaml_mapping(cfg_file, "config") == {"skymask": {"mask_lr": 1e7}, "rounds": 3}
