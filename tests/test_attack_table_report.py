"""The every-defense table's per-defense summary: mean and worst accuracy, mean rates, top backdoor success."""

from benchmarks.attack_table import by_defense_table, defense_summary_table


def _cell(acc, tpr=None, fpr=None, backdoor=None):
    return {"accuracy": acc, "tpr": tpr, "fpr": fpr, "backdoor_success": backdoor}


DONE = {
    ("min_max", "fedavg"): _cell(0.70), ("scaling", "fedavg"): _cell(0.76, backdoor=1.0),
    ("none", "fedavg"): _cell(0.75),
    ("min_max", "skymask"): _cell(0.74, 1.0, 0.0), ("scaling", "skymask"): _cell(0.72, 0.5, 0.1, backdoor=0.03),
    ("none", "skymask"): _cell(0.60, 0.4, 0.4),
    ("min_max", "krum"): _cell(0.69, 1.0, 0.99),  # row incomplete: no scaling cell
}
ATTACKS, DEFENSES = ["min_max", "scaling", "none"], ["fedavg", "skymask", "krum"]


def test_summary_averages_over_attacks_without_the_no_attack_run():
    rows = {line.split(" | ")[0].strip("| "): line for line in defense_summary_table(DONE, ATTACKS, DEFENSES).splitlines()[2:]}
    assert set(rows) == {"fedavg", "skymask"}  # krum's row is incomplete
    assert rows["skymask"] == "| skymask | 0.730 | 0.720 (scaling) | 0.75 | 0.05 | 0.03 (scaling) |"
    assert rows["fedavg"] == "| fedavg | 0.730 | 0.700 (min_max) | - | - | 1.00 (scaling) |"


def test_by_defense_table_marks_missing_cells_and_incomplete_rows():
    lines = by_defense_table(DONE, ATTACKS, DEFENSES).splitlines()
    assert lines[0].startswith("| defense | min_max | scaling | none |")
    krum = next(line for line in lines if line.startswith("| krum |"))
    assert "not run" in krum and krum.endswith("| - | - |")
    sky = next(line for line in lines if line.startswith("| skymask |"))
    assert "0.720 [0.03] (0.50/0.10)" in sky and "0.740 (1.00/0)" in sky
    assert sky.endswith("| 0.730 | 0.720 (scaling) |")
