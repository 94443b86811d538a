"""The cluster path end to end on one machine (issue 34): ``python -m benchmarks.cluster_local`` on a shorter study.

The benchmark starts ``cluster/cluster-local.yaml`` (Ray's autoscaler, fake nodes), submits a study with the
cron line of ``cluster/README.md``, kills a worker node in the middle of a cell, compares the rows with a
one-node run and checks that no process of the cluster is left; every check it makes must hold. To keep
it to minutes (the whole suite has a budget), the study is the benchmark's with 4 local epochs instead of
8, and the one-node run goes while the job runs. The node is killed once the second cell's checkpoint holds
a round, while its worker trains or at the latest on the cell's last round: SkyMask's cell (the mask
step makes its rounds the longest), with 6 rounds so that a busy machine still leaves it rounds to go.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from benchmarks.cluster_local import STUDY, free_port, readme_cron_command
from benchmarks.common import ROOT

pytestmark = pytest.mark.slow


def test_readme_cron_line_is_the_one_the_benchmark_runs():
    cmd = readme_cron_command()
    assert "ray job submit --address http://127.0.0.1:8265 --working-dir . -- skymask-ray bench --grid " \
           "benchmarks/studies/<study>.yaml --out ~/results/$(date +\\%F)" in cmd


def test_study_survives_a_lost_node_on_the_local_autoscaling_cluster(tmp_path):
    doc = yaml.safe_load(STUDY.read_text())
    doc["base"]["train"]["local_epochs"] = 4
    doc["base"]["rounds"] = 6
    study = tmp_path / "cluster_local_short.yaml"
    study.write_text(yaml.safe_dump(doc))
    port = free_port(8265)  # the cron line's port, unless something here holds it
    record = tmp_path / "record.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cluster_local", "--work", str(tmp_path / "work"),
                           "--study", str(study), "--dashboard-port", str(port), "--single-alongside",
                           "--record", str(record)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert record.with_suffix(".json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads(record.with_suffix(".json").read_text())
    failed = [name for name, ok in rec["checks"].items() if not ok]
    assert not failed, f"{failed}\n{record.read_text()[-6000:]}"
    assert proc.returncode == 0
    assert len(rec["row_diff"]) == 3 and rec["kill"]["cell"] == 2 and not rec["left_behind"]
