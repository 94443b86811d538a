"""Property: any value for any config field either validates or gives one ConfigError line, never another error."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skymask_ray.config import ExperimentConfig
from skymask_ray.params import check_types, leaf_fields
from skymask_ray.experiment import build_config
from skymask_ray.errors import ConfigError

ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.lists(st.integers(-3, 40), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
PATHS = [tuple(dotted.rpartition(".")[::2]) for dotted, _, _ in leaf_fields(ExperimentConfig)]  # every field
BASE = {"data": {"dataset": "synthetic"}, "model": "mlp", "clients": 10}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), ANY), min_size=1, max_size=3))
def test_any_value_validates_or_is_one_config_error(draws):
    ov = {"data": dict(BASE["data"]), "model": "mlp", "clients": 10}
    for (sec, name), value in draws:
        (ov.setdefault(sec, {}) if sec else ov)[name] = value
    try:
        cfg = build_config(overrides=ov)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    check_types(cfg)  # a config that validated holds only well-typed, finite values
    for v in (cfg.malicious_fraction, cfg.train.local_lr, cfg.train.global_lr, cfg.data.bias):
        assert math.isfinite(v)
    assert cfg.clients >= 2 and cfg.rounds >= 1 and (cfg.attack == "none" or cfg.num_malicious < cfg.clients)
