"""report: plots and the Markdown summary from synthetic rounds.parquet / masks.parquet files."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from matplotlib.ticker import MaxNLocator

from skymask_ray.config import ExperimentConfig
from skymask_ray.report import (
    build_report, load_runs, make_report, plot_accuracy, plot_cohort_sweep, plot_fraction_sweep, plot_scaling,
    tell_apart,
)
from skymask_ray.results import COLUMNS, MASK_SCHEMA, ParquetLog, config_record


def _row(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(dataset="synthetic", model="mlp", attack="min_max", fallback=False, config_hash="h", version="0")
    row.update(values)
    return row


def write_run(
    root: Path,
    defense: str,
    clients: int = 20,
    fraction: float = 0.2,
    seed: int = 0,
    rounds: int = 5,
    eval_every: int = 2,
    backdoor: bool = False,
    masks: bool = True,
    cohort: int | None = None,
    config: ExperimentConfig | None = None,
    name: str = "",
) -> tuple[Path, list[dict[str, Any]]]:
    """One run's rounds.parquet (and masks.parquet for skymask); returns its path and rows.

    ``cohort``: a cross-device run whose cohort of that many clients holds no attacker in round 1;
    ``config``: the rows' ``config`` column; ``name``: appended to the folder name."""
    out = root / (f"{defense}-N{clients}-f{fraction}-s{seed}" + (f"-K{cohort}" if cohort else "") + name)
    rng = np.random.default_rng([clients, int(fraction * 100), seed, len(defense), *([cohort] if cohort else [])])
    n = cohort or clients  # clients that report each round
    writer = ParquetLog(out / "rounds.parquet")
    rows = []
    for r in range(1, rounds + 1):
        evaluated = r % eval_every == 0 or r == rounds
        num_malicious = round(n * fraction) if cohort is None or r > 1 else 0
        tp = num_malicious if defense == "skymask" else 0
        fp = int(rng.integers(0, 2)) if defense == "skymask" else 0
        row = _row(
            round=r, clients=clients, malicious_fraction=fraction, malicious=num_malicious, defense=defense,
            seed=seed, accuracy=0.9 - 0.6 * 0.6**r + 0.02 * rng.random() if evaluated else None,
            loss=2.0 / r if evaluated else None,
            backdoor_success=0.05 * r if backdoor and evaluated else None,
            tp=tp, fp=fp, tn=n - num_malicious - fp, fn=num_malicious - tp,
            tpr=tp / num_malicious if num_malicious else None,
            fpr=fp / (n - num_malicious), accepted=n - tp - fp, fallback=r == 1 and defense == "skymask",
            t_clients=0.01 * clients, t_server=0.1, t_attack=0.01, t_defense=0.02 * clients, t_eval=0.05,
            t_round=0.03 * clients + rng.random(), peak_rss_mb=300.0 + 4 * clients + r,
            mem_pss_mb=200.0 + 2 * clients + r,
            cohort=n, malicious_in_cohort=num_malicious, config=config_record(config) if config else None,
        )
        writer.append(row)
        rows.append(row)
    if defense == "skymask" and masks:
        records = []
        for r in range(1, rounds + 1):
            records.append(dict(round=r, index=0, pc1=1.0, pc2=0.2, label=0, malicious=False, accepted=True,
                                is_server=True))
            for k in range(clients):
                malicious = k < num_malicious
                centre = (-2.0, 1.0) if malicious else (1.0, 0.0)
                records.append(dict(round=r, index=k + 1, pc1=centre[0] + 0.3 * rng.standard_normal(),
                                    pc2=centre[1] + 0.3 * rng.standard_normal(), label=int(malicious),
                                    malicious=malicious, accepted=not malicious and k != clients - 1, is_server=False))
        pq.write_table(pa.Table.from_pylist(records, schema=MASK_SCHEMA), out / "masks.parquet")
    return out / "rounds.parquet", rows


def table_rows(summary: Path) -> list[dict[str, str]]:
    """The run table of summary.md as dicts keyed by the header."""
    lines = [ln for ln in summary.read_text().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def assert_png(path: Path, min_w: int = 400, min_h: int = 300) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        w, h = img.size
        assert min_w <= w <= 6000 and min_h <= h <= 6000, (path.name, img.size)
        assert len(set(np.asarray(img.convert("L")).ravel()[::97].tolist())) > 5, "not a blank image"


@pytest.fixture()
def grid(tmp_path: Path) -> tuple[Path, dict[tuple[str, int, float, int], list[dict[str, Any]]]]:
    root = tmp_path / "results"
    runs = {}
    for defense in ("fedavg", "skymask"):
        for clients in (20, 50):
            for fraction in (0.2, 0.5):
                for seed in (0, 1):
                    _, rows = write_run(root, defense, clients, fraction, seed, backdoor=defense == "fedavg")
                    runs[(defense, clients, fraction, seed)] = rows
    return root, runs


def test_full_grid_writes_every_plot_and_a_row_per_run(grid, tmp_path: Path) -> None:
    root, runs = grid
    out = tmp_path / "report"
    report = build_report([root], out)
    names = {p.name for p in report.files}
    assert {"accuracy_vs_round.png", "fraction_sweep.png", "scaling.png", "summary.md"} <= names
    masks = sorted(n for n in names if n.startswith("mask_pca_"))
    assert len(masks) == 8 and all(n.endswith("_r5.png") for n in masks)
    assert report.skipped == {}
    for p in report.files:
        assert p.exists() and p.parent == out
        if p.suffix == ".png":
            assert_png(p)

    rows = table_rows(out / "summary.md")
    assert len(rows) == len(runs)
    for row in rows:
        key = (row["defense"], int(row["clients"]), float(row["f"]), int(row["seed"]))
        recorded = runs[key]
        assert row["dataset"] == "synthetic" and row["attack"] == "min_max"
        assert row["rounds"] == "5"
        assert row["final accuracy"] == f"{recorded[-1]['accuracy']:.4f}"
        if key[0] == "fedavg":  # rejects nobody: no rates, not 0
            assert row["mean TPR"] == row["mean FPR"] == "n/a"
        else:
            tpr = [r["tpr"] for r in recorded if r["tpr"] is not None]
            assert row["mean TPR"] == f"{np.mean(tpr):.3f}"
            assert row["mean FPR"] == f"{np.mean([r['fpr'] for r in recorded]):.3f}"
        assert row["mean round s"] == f"{np.mean([r['t_round'] for r in recorded]):.2f}"
        assert row["sum of peaks MB"] == f"{max(r['peak_rss_mb'] for r in recorded):.0f}"
        assert row["mem in use MB"] == f"{max(r['mem_pss_mb'] for r in recorded):.0f}"
        assert row["fallbacks"] == ("1" if key[0] == "skymask" else "0")
        expected_backdoor = f"{recorded[-1]['backdoor_success']:.4f}" if key[0] == "fedavg" else "—"
        assert row["final backdoor success"] == expected_backdoor
    loaded = [run for f in sorted(root.rglob("rounds.parquet")) for run in load_runs(f)]
    assert plot_scaling(loaded).axes[1].get_ylabel() == "memory in use, PSS (MB)"  # not the overstated RSS sum
    for run in loaded[:1]:  # a file from before mem_pss_mb: the RSS sum, named as such
        run.metrics["mem_pss_mb"][:] = np.nan
    assert plot_scaling(loaded).axes[1].get_ylabel() == "sum of per-process peak RSS (MB)"
    text = (out / "summary.md").read_text()
    assert "![accuracy_vs_round](accuracy_vs_round.png)" in text
    assert "Skipped" not in text
    assert "n/a: the defense rejected no client in any round of that run (fedavg)" in text


def test_cohorts_tell_runs_apart_and_get_their_own_sweep(tmp_path: Path) -> None:
    root = tmp_path / "population"
    runs = {}
    for defense in ("fedavg", "skymask"):
        for cohort in (10, 20, 40):
            runs[defense, cohort] = write_run(root, defense, clients=200, seed=0, rounds=4, cohort=cohort)[1]
    out = tmp_path / "report"
    report = build_report([root], out)
    names = {p.name for p in report.files}
    assert "cohort_sweep.png" in names and "cohort_sweep" not in " ".join(report.skipped)
    assert_png(out / "cohort_sweep.png")
    masks = sorted(n for n in names if n.startswith("mask_pca_"))
    assert masks == [f"mask_pca_synthetic-mlp-N200-K{k}-f0.2-min_max-skymask-s0_r4.png" for k in (10, 20, 40)]
    rows = table_rows(out / "summary.md")
    assert len(rows) == 6 and "source" not in rows[0]  # same run keys, told apart by K
    for row in rows:
        recorded = runs[row["defense"], int(row["K"])]
        assert row["clients"] == "200"
        if row["defense"] == "fedavg":
            assert row["FPR w/o attacker (rounds)"] == "n/a (0)"
        else:  # round 1's cohort held no attacker: its FPR alone
            assert recorded[0]["malicious_in_cohort"] == 0 and recorded[0]["tpr"] is None
            assert row["FPR w/o attacker (rounds)"] == f"{recorded[0]['fpr']:.3f} (1)"
            assert row["mean FPR"] == f"{np.mean([r['fpr'] for r in recorded]):.3f}"


def test_full_participation_reports_have_no_cohort_column_or_sweep(grid, tmp_path: Path) -> None:
    root, _ = grid
    report = build_report([root], tmp_path / "report")
    assert "K" not in table_rows(tmp_path / "report" / "summary.md")[0]
    assert not any(p.name == "cohort_sweep.png" for p in report.files)
    assert not any("cohort" in name for name in report.skipped)  # does not apply, so not listed as skipped


def test_make_report_returns_paths_and_accepts_files(grid, tmp_path: Path) -> None:
    root, _ = grid
    files = sorted(root.rglob("rounds.parquet"))[:3]
    written = make_report(files, tmp_path / "r")
    assert all(isinstance(p, Path) and p.exists() for p in written)
    assert len(table_rows(tmp_path / "r" / "summary.md")) == 3


def test_single_run_skips_sweeps_cleanly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, rows = write_run(tmp_path / "res", "skymask", masks=False)
    with caplog.at_level(logging.INFO, logger="skymask_ray.report"):
        report = build_report([path], tmp_path / "out")
    assert {p.name for p in report.files} == {"accuracy_vs_round.png", "summary.md"}
    assert set(report.skipped) == {
        "accuracy and TPR/FPR vs malicious fraction",
        "round time and memory vs client count",
        "mask PCA of synthetic-mlp-N20-f0.2-min_max-skymask-s0",
    }
    assert "malicious_fraction=0.2" in report.skipped["accuracy and TPR/FPR vs malicious fraction"]
    assert "no _masks.parquet" in report.skipped["mask PCA of synthetic-mlp-N20-f0.2-min_max-skymask-s0"]
    assert "skipped round time and memory vs client count" in caplog.text
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "## Skipped plots" in text and "clients=20" in text
    assert not any("backdoor" in column for column in table_rows(tmp_path / "out" / "summary.md")[0])
    assert_png(tmp_path / "out" / "accuracy_vs_round.png")


def test_no_accuracy_anywhere_skips_the_accuracy_plot(tmp_path: Path) -> None:
    writer = ParquetLog(tmp_path / "run" / "rounds.parquet")
    writer.append(_row(round=1, clients=10, malicious_fraction=0.0, defense="fedavg", seed=0, t_round=1.0))
    report = build_report([tmp_path], tmp_path / "out")
    assert "accuracy vs round" in report.skipped
    assert [p.name for p in report.files] == ["summary.md"]
    row = table_rows(tmp_path / "out" / "summary.md")[0]
    assert row["final accuracy"] == "—" and row["mean TPR"] == "n/a" and row["mean round s"] == "1.00"


def test_mask_round_choice(grid, tmp_path: Path) -> None:
    root, _ = grid
    run_dir = root / "skymask-N20-f0.5-s1"
    written = make_report([run_dir], tmp_path / "r2", round=2)
    assert [p.name for p in written if p.name.startswith("mask_pca_")] == [
        "mask_pca_synthetic-mlp-N20-f0.5-min_max-skymask-s1_r2.png"
    ]
    report = build_report([run_dir], tmp_path / "r99", mask_round=99)
    assert not any(p.name.startswith("mask_pca_") for p in report.files)
    (reason,) = [why for name, why in report.skipped.items() if name.startswith("mask PCA")]
    assert "round 99" in reason and "rounds 1..5" in reason


def test_resumed_file_keeps_the_last_row_per_round(tmp_path: Path) -> None:
    rows = [_row(round=r, clients=10, malicious_fraction=0.1, defense="krum", seed=3, accuracy=acc)
            for r, acc in ((1, 0.1), (2, 0.2), (2, 0.25), (3, 0.3), (3, 0.35))]
    from skymask_ray.results import SCHEMA

    path = tmp_path / "rounds.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    (run,) = load_runs(path)
    assert run.rounds.tolist() == [1, 2, 3]
    assert run.metrics["accuracy"].tolist() == [0.1, 0.25, 0.35]
    assert math.isclose(run.last("accuracy"), 0.35)


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_report([tmp_path / "nope"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no rounds.parquet below"):
        make_report([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(ValueError, match="no result paths"):
        make_report([], tmp_path / "out")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a rounds file"):
        make_report([tmp_path / "other.parquet"], tmp_path / "out")
    ParquetLog(tmp_path / "killed" / "rounds.parquet").append(
        _row(round=1, clients=10, malicious_fraction=0.0, defense="fedavg", seed=0))
    pq.write_table(pq.read_table(tmp_path / "killed" / "rounds.parquet").slice(0, 0),
                   tmp_path / "killed" / "rounds.parquet")
    with pytest.raises(ValueError, match="no rounds recorded"):
        make_report([tmp_path / "killed"], tmp_path / "out")


def test_round_axes_have_integer_ticks(tmp_path: Path) -> None:
    path, _ = write_run(tmp_path / "res", "fedavg", rounds=3, eval_every=1)
    fig = plot_accuracy(load_runs(path))
    (ax,) = [a for a in fig.axes if a.get_xlabel() == "round"]
    assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # 1..3 would otherwise tick every 0.5


def _never_rejecting(root: Path, fraction: float, nulls: bool) -> Path:
    """A median run that rejected nobody: tp = fp = 0 every round, or (``nulls``) no detection columns at all."""
    writer = ParquetLog(root / f"median-f{fraction}-{nulls}" / "rounds.parquet")
    for r in (1, 2):
        det = {} if nulls else dict(tp=0, fp=0, tn=8, fn=2, tpr=0.0, fpr=0.0)
        writer.append(_row(round=r, clients=10, malicious_fraction=fraction, defense="median", seed=0,
                           accuracy=0.5 + 0.1 * r, t_round=1.0, peak_rss_mb=100.0, **det))
    return writer.path


def test_a_defense_that_never_rejects_has_no_rates(tmp_path: Path) -> None:
    root = tmp_path / "res"
    for fraction in (0.2, 0.5):
        write_run(root, "skymask", clients=10, fraction=fraction, masks=False)
        _never_rejecting(root, fraction, nulls=fraction == 0.5)  # both ways of never rejecting
    runs = [run for f in sorted(root.rglob("rounds.parquet")) for run in load_runs(f)]
    median = [r for r in runs if r.key["defense"] == "median"]
    assert len(median) == 2 and all(r.never_rejects for r in median)
    assert all(np.isnan(r.metrics["tpr"]).all() and np.isnan(r.metrics["fpr"]).all() for r in median)
    assert not any(r.never_rejects for r in runs if r.key["defense"] == "skymask")

    fig = plot_fraction_sweep(runs)
    acc, tpr, fpr = fig.axes[:3]
    assert len(acc.get_lines()) == 2  # accuracy: both defenses
    for ax in (tpr, fpr):  # rates: skymask only, no line of zeros for median
        (line,) = ax.get_lines()
        assert len(line.get_xdata()) == 2
        assert "not drawn (rejected no client): median" in ax.get_title()

    report = build_report([root], tmp_path / "out")
    rows = {(r["defense"], r["f"]): r for r in table_rows(tmp_path / "out" / "summary.md")}
    for f in ("0.2", "0.5"):
        assert rows["median", f]["mean TPR"] == rows["median", f]["mean FPR"] == "n/a"
        assert rows["median", f]["final accuracy"] == "0.7000"
        assert rows["skymask", f]["mean TPR"] == "1.000"
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "n/a: the defense rejected no client in any round of that run (median)" in text
    assert "fraction_sweep.png" in {p.name for p in report.files}


def test_corrupted_parquet_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "run" / "rounds.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"not parquet at all\n" * 10)
    with pytest.raises(ValueError) as info:
        make_report([bad.parent], tmp_path / "out")
    assert str(bad) in str(info.value) and "\n" not in str(info.value)

    path, _ = write_run(tmp_path / "res", "skymask", masks=False)
    masks = path.parent / "masks.parquet"
    masks.write_bytes(path.read_bytes()[:200])  # a Parquet file cut short
    with pytest.raises(ValueError) as info:
        make_report([path], tmp_path / "out2")
    assert str(masks) in str(info.value) and "\n" not in str(info.value)


def test_out_that_is_an_existing_file_is_refused(grid, tmp_path: Path) -> None:
    root, _ = grid
    taken = tmp_path / "report.md"
    taken.write_text("keep me\n")
    with pytest.raises(ValueError, match=re.escape(str(taken))):
        make_report([root], taken)
    assert taken.read_text() == "keep me\n"

    from click.testing import CliRunner

    from skymask_ray.cli import main

    res = CliRunner().invoke(main, ["report", str(root), "--out", str(taken)])
    assert res.exit_code == 2 and str(taken) in res.output and "Traceback" not in res.output


def _with(cfg: ExperimentConfig, **skymask: Any) -> ExperimentConfig:
    return dataclasses.replace(cfg, skymask=dataclasses.replace(cfg.skymask, **skymask))


def test_config_fields_that_differ_tell_runs_apart(tmp_path: Path) -> None:
    root = tmp_path / "study"
    base = ExperimentConfig(clients=20, malicious_fraction=0.2, attack="min_max", defense="skymask")
    for seed in (0, 1):
        for select, workers in (("gmm2", 1), ("silhouette", 2)):  # workers: how it ran, not what it computed
            cfg = dataclasses.replace(_with(base, select=select), workers=workers, seed=seed)
            write_run(root, "skymask", seed=seed, config=cfg, name=f"-{select}")
    out = tmp_path / "report"
    report = build_report([root], out)
    rows = table_rows(out / "summary.md")
    assert len(rows) == 4 and "source" not in rows[0] and "workers" not in rows[0]
    assert sorted((r["seed"], r["skymask.select"]) for r in rows) == [
        ("0", "gmm2"), ("0", "silhouette"), ("1", "gmm2"), ("1", "silhouette")]
    masks = sorted(p.name for p in report.files if p.name.startswith("mask_pca_"))
    assert masks == [f"mask_pca_synthetic-mlp-N20-f0.2-min_max-skymask-s{s}-skymask.select_{r}_r5.png"
                     for s in (0, 1) for r in ("gmm2", "silhouette")]  # one file each, none overwritten
    runs = [run for f in sorted(root.rglob("rounds.parquet")) for run in load_runs(f)]
    assert len(plot_accuracy(runs).axes[0].get_lines()) == 1  # on run keys alone both rules merge into one line
    assert tell_apart(runs) == ["skymask.select"]
    fig = plot_accuracy(runs)
    assert len(fig.axes[0].get_lines()) == 2  # one line per rule, the mean over its two seeds
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"skymask.select=gmm2", "skymask.select=silhouette"} <= legend


def test_a_field_some_files_do_not_record_is_not_a_difference(tmp_path: Path) -> None:
    root = tmp_path / "study"
    base = ExperimentConfig(clients=20, malicious_fraction=0.2, attack="min_max", defense="skymask")
    write_run(root, "skymask", seed=0, config=base)
    path, _ = write_run(root, "skymask", seed=1, config=base)
    table = pq.read_table(path)
    old = [{k: v for k, v in c.items() if k != "skymask"} for c in table.column("config").to_pylist()]
    legacy = table.drop_columns(["config"]).append_column("config", pa.array(old))  # a file from before a field
    pq.write_table(legacy, path)
    build_report([root], tmp_path / "report")
    assert list(table_rows(tmp_path / "report" / "summary.md")[0])[7] == "rounds"  # no extra column after seed


def test_a_rule_that_chose_to_accept_everyone_has_rates(tmp_path: Path) -> None:
    """SkyMask's silhouette rule accepting all clients is a decision: FPR 0, not n/a like a rule that cannot reject."""
    writer = ParquetLog(tmp_path / "res" / "rounds.parquet")
    for r in (1, 2):
        writer.append(_row(round=r, clients=10, malicious_fraction=0.0, malicious=0, attack="none",
                           defense="skymask", seed=0, accuracy=0.6, tp=0, fp=0, tn=10, fn=0, fpr=0.0,
                           single_component=True, t_round=1.0, peak_rss_mb=100.0))
    (run,) = load_runs(writer.path)
    assert not run.never_rejects and run.mean("fpr") == 0.0
    build_report([tmp_path / "res"], tmp_path / "out")
    assert table_rows(tmp_path / "out" / "summary.md")[0]["mean FPR"] == "0.000"


def test_cohort_panel_without_lines_keeps_the_cohort_axis(tmp_path: Path) -> None:
    root = tmp_path / "population"
    for cohort in (10, 40, 160):
        path, _ = write_run(root, "skymask", clients=400, seed=0, rounds=3, cohort=cohort, masks=False)
        table = pq.read_table(path)  # an attacker in every round: the last panel has nothing to draw
        pq.write_table(table.set_column(table.schema.get_field_index("malicious_in_cohort"), "malicious_in_cohort",
                                        pa.array([2] * table.num_rows, pa.int64())), path)
    fig = plot_cohort_sweep([run for f in sorted(root.rglob("rounds.parquet")) for run in load_runs(f)])
    acc, *_, quiet = fig.axes[:4]
    assert not quiet.get_lines() and quiet.get_title().endswith("no such round")
    assert quiet.get_xlim() == acc.get_xlim() and acc.get_xlim()[0] < 10 and acc.get_xlim()[1] > 160


def test_a_defense_seen_rejecting_elsewhere_keeps_its_rates(tmp_path: Path) -> None:
    """FLAME accepting every client in one run is a decision (TPR 0) when it rejected clients in another."""
    root = tmp_path / "res"
    for fraction, rejects in ((0.2, True), (0.5, False)):
        writer = ParquetLog(root / f"flame-{fraction}" / "rounds.parquet")
        for r in (1, 2):
            tp = 2 if rejects else 0
            writer.append(_row(round=r, clients=10, malicious_fraction=fraction, malicious=int(10 * fraction),
                               defense="flame", seed=0, accuracy=0.5, tp=tp, fp=0, tn=10 - int(10 * fraction),
                               fn=int(10 * fraction) - tp, tpr=tp / (10 * fraction), fpr=0.0, t_round=1.0))
    _never_rejecting(root, 0.5, nulls=False)
    alone = load_runs(root / "flame-0.5" / "rounds.parquet")[0]
    assert alone.never_rejects and np.isnan(alone.metrics["tpr"]).all()  # one file alone cannot tell
    build_report([root], tmp_path / "out")
    rows = {(r["defense"], r["f"]): r for r in table_rows(tmp_path / "out" / "summary.md")}
    assert rows["flame", "0.5"]["mean TPR"] == "0.000" and rows["flame", "0.5"]["mean FPR"] == "0.000"
    assert rows["flame", "0.2"]["mean TPR"] == "1.000"
    assert rows["median", "0.5"]["mean TPR"] == "n/a"  # rejected nobody anywhere


def test_a_config_field_named_like_a_column_is_prefixed(tmp_path: Path) -> None:
    root = tmp_path / "study"
    base = ExperimentConfig(clients=20, malicious_fraction=0.2, attack="min_max", defense="skymask")
    for rounds in (3, 5):
        write_run(root, "skymask", rounds=rounds, config=dataclasses.replace(base, rounds=rounds), name=f"-r{rounds}")
    build_report([root], tmp_path / "report")
    rows = table_rows(tmp_path / "report" / "summary.md")
    assert sorted((r["config.rounds"], r["rounds"]) for r in rows) == [("3", "3"), ("5", "5")]
