"""The cluster path on one machine (issue 34): an autoscaling cluster, a study as a Ray Job, a node lost mid-cell.

    python -m benchmarks.cluster_local [--work DIR] [--dashboard-port 8265] [--record PATH]

1. Starts ``cluster/cluster-local.yaml`` as ``cluster/README.md`` says (``RAY_FAKE_CLUSTER=1 ray start --head
   --num-cpus 1 --autoscaling-config=...``), in a session of its own: every process of the cluster, the
   worker nodes the autoscaler starts included, is in it, so stopping it ends exactly those (never
   ``ray stop``, which ends every Ray on the machine).
2. Asks the autoscaler for two GPU nodes (README: a second GPU node for GPU client workers) and waits
   for them.
3. Runs the crontab command of ``cluster/README.md`` (``ray job submit --address http://127.0.0.1:8265
   --working-dir . -- skymask-ray bench --grid ... --out ...``) with only its file names changed, on
   ``benchmarks/studies/cluster_local.yaml`` (3 cells, ``workers: 3``): the pool the head cannot hold
   is demand for which the autoscaler adds a CPU node.
4. Once the second cell's run folder holds its first round (its checkpoint, read on disk: the job's log
   reaches ``ray job submit`` seconds late), kills one CPU worker node hosting a client worker (its
   raylet, the raylet's processes and its log monitor, with SIGKILL, as a lost machine) at a moment that
   worker's process computes, i.e. trains its clients, and at the latest when the cell starts its last
   round. The checks ask for the kill between the cell's first and last round's end, and for the pool's
   restart line in a round after the kill.
5. When the job is done: reads the nodes (start and end times), the retried training tasks, each
   cell's layout, stops the cluster and checks that none of its processes is left; then runs the same
   study on a single-node local Ray and compares every non-timing column of every row.

Writes ``benchmarks/results/cluster_local.md`` (and ``.json``: what the slow test reads). Exit status 1
when a check fails. Times are wall-clock seconds on the machine it ran on.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from benchmarks.common import ROOT, STUDIES, command_line, results_path, script
from skymask_ray.markdown import markdown_table
from skymask_ray.run_folder import RunFolder
from skymask_ray.storage import atomic_write_text
from skymask_ray.study import load_study

CONFIG = ROOT / "cluster" / "cluster-local.yaml"
README = ROOT / "cluster" / "README.md"
STUDY = STUDIES / "cluster_local.yaml"
SCHEDULE = "0 2 * * 1 "  # the README's crontab entry starts with its schedule
DEFAULT_GCS_PORT = 6379  # where the provider's worker nodes look for the head unless told otherwise
OBJECT_STORE = 200 * 1024**2
KILL_IN = 2  # the study's cell in which a node is lost: skymask's, whose rounds are the longest
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CELL_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+)")
ROUND_LINE = re.compile(r"^\s+round\s+(\d+) \|")
RESTART_LINE = re.compile(r"round (\d+): client worker (\d+) (was restarted|lost its node)")
FALLBACK_NOTE = "its client workers train on its CPUs"
QUIET = re.compile(r"\(autoscaler \+|packaging\.py|working_dir\.py|dashboard_sdk\.py|INFO cli\.py|sdk\.py:|"
                   r"SUCC cli\.py:6[68]|^\||^\s+\(2\) raylet")  # lines the record's log extract leaves out
NOT_COMPARED = ("peak_rss_mb", "mem_pss_mb")  # and every t_* column: how long and how much memory, not what


# ----- the README's cron line -----------------------------------------------------------------------
def readme_cron_command(readme: Path = README) -> str:
    """The command of the crontab entry that ``cluster/README.md`` shows (as ``crontab -l`` reads), no schedule."""
    for line in readme.read_text().splitlines():
        if line.startswith(SCHEDULE):
            return line[len(SCHEDULE):]
    raise ValueError(f"{readme} shows no crontab entry starting with {SCHEDULE!r}")


def local_cron_command(ray: Path, study: Path, results: Path, dashboard_port: int = 8265,
                       readme: Path = README) -> str:
    """The README's cron command with this machine's file names: the checkout, the ``ray`` command, the study,
    the results folder (``~/results/``, which holds ``$(date +%F)/`` and ``cron.log``). The dashboard port
    changes only when asked (the README's 8265 taken on this machine). The rest is the README's, unchanged."""
    cmd = readme_cron_command(readme).replace("\\%", "%")  # crontab's escape of %, which cron removes
    study_arg = (f"benchmarks/studies/{study.stem}.yaml" if study.resolve().parent == STUDIES.resolve()
                 else shlex.quote(str(study.resolve())))
    names = {"~/skymask-ray": shlex.quote(str(ROOT)), "~/venv/bin/ray": shlex.quote(str(ray)),
             "benchmarks/studies/<study>.yaml": study_arg, "~/results/": f"{shlex.quote(str(results))}/"}
    for old, new in names.items():
        if old not in cmd:
            raise ValueError(f"the README's cron command no longer holds {old!r}: {cmd}")
        cmd = cmd.replace(old, new)
    if dashboard_port != 8265:
        cmd = cmd.replace("http://127.0.0.1:8265", f"http://127.0.0.1:{dashboard_port}")
    return cmd


# ----- processes (Linux /proc) ---------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    state: str
    cmdline: str


def processes() -> list[Proc]:
    """Every process of the machine with its parent, session and state (Z: a zombie, ended)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        out.append(Proc(int(entry.name), int(fields[1]), int(fields[3]), fields[0], cmd))
    return out


def live_in_session(sid: int) -> list[Proc]:
    """The processes of session ``sid`` that have not ended."""
    return [p for p in processes() if p.sid == sid and p.state != "Z"]


def descendants(root: int, procs: list[Proc]) -> list[Proc]:
    """``root``'s children, their children, ..."""
    out, todo = [], [root]
    while todo:
        parent = todo.pop()
        kids = [p for p in procs if p.ppid == parent]
        out += kids
        todo += [k.pid for k in kids]
    return out


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when nothing listens there, else a port the OS says is free (outside Ray's worker ports)."""
    if preferred is not None:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no owner
            try:
                s.bind(("", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# ----- the cluster ---------------------------------------------------------------------------------
def ray_command(bin_dir: Path) -> Path:
    """This environment's ``ray`` command; where it has none (a venv over another's packages), a two-line
    script in ``bin_dir`` running ``python -m ray.scripts.scripts`` with this interpreter."""
    own = Path(sys.executable).with_name("ray")
    if own.exists():
        return own
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "ray"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m ray.scripts.scripts "$@"\n')
    shim.chmod(0o755)
    return shim


def cluster_env(ray: Path) -> dict[str, str]:
    """The environment of the head and of the job's client: this venv's ``skymask-ray`` and ``ray`` first on
    PATH (the job driver runs the ``skymask-ray`` it finds there), no RAY_ADDRESS, one RAY_AUTH_MODE."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = os.pathsep.join(dict.fromkeys([str(Path(sys.executable).parent), str(ray.parent),
                                                 env.get("PATH", "")]))
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


class LocalCluster:
    """``cluster/cluster-local.yaml`` started as ``cluster/README.md`` says, in a session of its own."""

    def __init__(self, work: Path, ray: Path, dashboard_port: int) -> None:
        self.work, self.ray, self.dashboard_port = work, ray, dashboard_port
        self.sid: int | None = None
        self.temp_dir: Path | None = None
        self.gcs_port = DEFAULT_GCS_PORT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def start(self) -> str:
        """Start the head (the autoscaler comes with it); returns ``ray start``'s output."""
        import ray._private.services

        self.gcs_port = free_port(DEFAULT_GCS_PORT)
        config = yaml.safe_load(CONFIG.read_text())
        if self.gcs_port != DEFAULT_GCS_PORT:  # the provider's worker nodes look for the head at <ip>:6379
            ip = ray._private.services.get_node_ip_address()
            config["provider"]["gcs_address"] = f"{ip}:{self.gcs_port}"
        path = self.work / "cluster-local.yaml"
        atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
        self.temp_dir = Path(tempfile.mkdtemp(prefix="skr-", dir="/tmp"))  # short: Ray's socket paths have a limit
        env = {**cluster_env(self.ray), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "2"}
        cmd = [str(self.ray), "start", "--head", "--num-cpus", "1", f"--port={self.gcs_port}",
               f"--dashboard-port={self.dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
               f"--ray-client-server-port={free_port()}", f"--temp-dir={self.temp_dir}",
               f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats", f"--autoscaling-config={path}"]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.sid = proc.pid  # its children (the head's processes, later the worker nodes) stay in its session
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed ({proc.returncode}):\n{out[-3000:]}")
        return out

    def node_processes(self, node_id: str) -> list[int]:
        """What dies with a worker node's machine: its raylet, the raylet's processes (agents, workers), its log
        monitor."""
        procs = [p for p in processes() if p.sid == self.sid and p.state != "Z"]
        raylet = next(p for p in procs if f"--node_id={node_id}" in p.cmdline and "raylet" in p.cmdline.split()[0])
        index = re.search(r"sockets/raylet(\.\d+)?\b", raylet.cmdline)
        monitor = f"log_monitor{index.group(1) or ''}.out" if index else None
        return [raylet.pid, *(p.pid for p in descendants(raylet.pid, procs)),
                *(p.pid for p in procs if monitor and "log_monitor.py" in p.cmdline and monitor in p.cmdline)]

    @staticmethod
    def kill(pids: list[int]) -> None:
        """SIGKILL ``pids`` (processes of this cluster, from :meth:`node_processes`) at once."""
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, grace_s: float = 10.0) -> list[Proc]:
        """End every process of the cluster's session (SIGTERM, then SIGKILL after ``grace_s``); returns those
        still running after that (none expected)."""
        if self.sid is None:
            return []
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            for p in live_in_session(self.sid):
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while live_in_session(self.sid) and time.monotonic() < deadline:
                time.sleep(0.5)
        return live_in_session(self.sid)


def request_gpu_nodes(gcs_address: str, n: int) -> None:
    """Ask the autoscaler for ``n`` one-GPU bundles, as cluster/README.md does for GPU client workers."""
    import ray
    from ray.autoscaler.sdk import request_resources

    ray.init(address=gcs_address, logging_level="ERROR", log_to_driver=False)
    try:
        request_resources(bundles=[{"GPU": 1}] * n)
    finally:
        ray.shutdown()


# ----- what the cluster says (state API over the dashboard) -----------------------------------------
def list_nodes(url: str) -> list[Any]:
    from ray.util.state import list_nodes as ls

    return ls(address=url, detail=True, limit=1000, raise_on_missing_output=False)


def node_kind(node: Any) -> str:
    if node.is_head_node:
        return "head"
    return "worker.gpu" if node.resources_total.get("GPU", 0) >= 1 else "worker.cpu"


def wait_for_nodes(url: str, kind: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if sum(1 for n in list_nodes(url) if n.state == "ALIVE" and node_kind(n) == kind) >= count:
                return
        except Exception:  # noqa: BLE001 - the dashboard may not answer yet
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the autoscaler did not bring up {count} {kind} node(s) within {timeout_s:.0f}s")


def train_attempts(url: str) -> list[Any]:
    from ray.util.state import list_tasks

    return list_tasks(address=url, filters=[("name", "=", "WorkerHost.train")], limit=10000,
                      raise_on_missing_output=False)


# ----- the job's log ---------------------------------------------------------------------------------
class LogTail(threading.Thread):
    """Reads the cron log as it grows; every line with the seconds since ``t0`` at which it was read."""

    def __init__(self, path: Path, t0: float) -> None:
        super().__init__(daemon=True)
        self.path, self.t0 = path, t0
        self.lines: list[tuple[float, str]] = []
        self.done = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        pos, rest = 0, ""
        while True:
            finished = self.done.is_set()
            if self.path.exists():
                with open(self.path, errors="replace") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
                    pos = fh.tell()
                rest += chunk
                *full, rest = rest.split("\n")
                now = time.time() - self.t0
                with self.lock:
                    self.lines += [(now, ANSI.sub("", line)) for line in full]
            if finished:
                return
            time.sleep(0.2)

    def snapshot(self) -> list[tuple[float, str]]:
        with self.lock:
            return list(self.lines)


def cell_names(lines: list[tuple[float, str]]) -> list[str]:
    """The cells in the order the log started them."""
    return [m.group(3) for _, line in lines if (m := CELL_LINE.match(line))]


# ----- the run ---------------------------------------------------------------------------------------
@dataclass
class Kill:
    node_id: str
    kind: str
    t: float  # seconds since the head was started
    cell: int
    while_training: bool  # its client worker's process was computing just before
    pids: list[int]
    rounds_done: int  # the cell's rounds its checkpoint held when the node was killed
    cell_rounds: int  # the cell's rounds in all


def cpu_worker_node(url: str) -> tuple[str, list[int]] | None:
    """A CPU worker node hosting client workers, and their process ids (None when no such node)."""
    from ray.util.state import list_actors

    nodes = {n.node_id: n for n in list_nodes(url) if n.state == "ALIVE"}
    actors = list_actors(address=url, filters=[("class_name", "=", "WorkerHost"), ("state", "=", "ALIVE")],
                         limit=1000, raise_on_missing_output=False)
    hosts = sorted({a.node_id for a in actors if a.node_id in nodes and node_kind(nodes[a.node_id]) == "worker.cpu"})
    return (hosts[0], [a.pid for a in actors if a.node_id == hosts[0]]) if hosts else None


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (user + system), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_busy(pids: list[int], give_up: Callable[[], bool], window_s: float = 0.1) -> bool:
    """Wait until one of ``pids`` computes (more than half a core over ``window_s``): a client worker computes
    only while it trains its clients. False once ``give_up()`` says so before any did."""
    before = {p: cpu_seconds(p) for p in pids}
    while not give_up():
        time.sleep(window_s)
        now = {p: cpu_seconds(p) for p in pids}
        if any(now[p] - before[p] > 0.5 * window_s for p in pids):
            return True
        before = now
    return False


def rounds_done(results: Path, cell: str) -> int:
    """Rounds of run folder ``cell`` under ``results/<date>/`` that its checkpoint holds (0 before its first).

    The job writes them on this machine as each round ends, so this is where the study is now; its log
    reaches ``ray job submit`` seconds late, and late by more on a busy machine."""
    metas = [RunFolder(p).checkpoint_meta() for p in results.glob(f"*/{cell}") if p.is_dir()]
    return max((int(m["round"]) for m in metas if m), default=0)


def run_job(cluster: LocalCluster, command: str, results: Path, t0: float, study: Path, kill_in: int,
            timeout_s: float) -> tuple[int, float, list[tuple[float, str]], Kill | None]:
    """Run the cron command (it waits for the job), killing a CPU worker node that hosts a client worker once
    the study's ``kill_in``-th cell has a round done and at least one to go, at a moment that worker
    computes (trains: see :func:`wait_until_busy`). Once the cell is on its last round, the node is killed
    without waiting (that round's calls still find it gone); once the cell is done, it is not killed.
    Returns the command's exit status, its wall time, the log lines (``results/cron.log``) and the kill."""
    cell = load_study(study).expand()[kill_in - 1]
    total = cell.config.rounds
    results.mkdir(parents=True, exist_ok=True)
    tail = LogTail(results / "cron.log", t0)
    tail.start()
    started = time.time()
    job = subprocess.Popen(["bash", "-c", command], env=cluster_env(cluster.ray), start_new_session=True)
    kill = None
    try:
        while job.poll() is None:
            if time.time() - started > timeout_s:
                raise TimeoutError(f"the job did not finish within {timeout_s:.0f}s")
            done = rounds_done(results, cell.name)
            if kill is None and 1 <= done < total and (victim := cpu_worker_node(cluster.url)) is not None:
                node_id, workers = victim
                pids = cluster.node_processes(node_id)
                busy = wait_until_busy(workers, lambda: job.poll() is not None
                                       or rounds_done(results, cell.name) >= total - 1)
                done = rounds_done(results, cell.name)
                if job.poll() is None and done < total:
                    cluster.kill(pids)
                    kill = Kill(node_id, "worker.cpu", time.time() - t0, kill_in, busy, pids, done, total)
            time.sleep(0.2)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        wall = time.time() - started
        tail.done.set()
        tail.join()
    return job.returncode, wall, tail.snapshot(), kill


def working_dir_package_mb() -> float:
    """Size of the zip ``ray job submit --working-dir .`` uploads from this checkout (Ray's own packaging:
    .gitignore, .rayignore and Ray's default excludes)."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "pkg.zip"
        create_package(str(ROOT), target, include_gitignore=True,
                       excludes=ray_constants.get_runtime_env_default_excludes())
        return target.stat().st_size / 1024**2


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024**2


def compare_rows(multi: Path, single: Path) -> dict[str, list[str]]:
    """Per cell: the columns (and rounds) whose values differ between the two study folders, timing aside."""
    from skymask_ray.results import read_parquet

    out = {}
    for cell in sorted(p.name for p in single.iterdir() if (p / "rounds.parquet").exists()):
        a = read_parquet(multi / cell / "rounds.parquet").to_pylist() if (multi / cell / "rounds.parquet").exists() \
            else []
        b = read_parquet(single / cell / "rounds.parquet").to_pylist()
        if len(a) != len(b):
            out[cell] = [f"{len(a)} rows against {len(b)}"]
            continue
        diff = sorted({f"{k} (round {rb['round']})" for ra, rb in zip(a, b) for k in rb
                       if not k.startswith("t_") and k not in NOT_COMPARED and ra.get(k) != rb[k]})
        out[cell] = diff
    return out


def single_node_run(study: Path, out: Path, log: Path) -> subprocess.Popen:
    """Start the same study on a local Ray of this machine alone (no RAY_ADDRESS): ``skymask-ray bench`` as the
    job runs it, its output to ``log``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "w") as fh:  # the child has its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "skymask_ray.cli", "bench", "--grid", str(study), "--out",
                                 str(out)], env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)


def run(work: Path, study: Path, dashboard_port: int, gpu_nodes: int, timeout_s: float,
        single_alongside: bool = False) -> dict[str, Any]:
    """The whole exercise; returns what the record says (every number and check)."""
    work.mkdir(parents=True, exist_ok=True)
    ray = ray_command(work / "bin")
    cluster = LocalCluster(work, ray, dashboard_port)
    results = work / "results"
    command = local_cron_command(ray, study, results, dashboard_port)
    rec: dict[str, Any] = {"command": command, "study": str(study.relative_to(ROOT) if study.is_relative_to(ROOT)
                                                             else study),
                           "dashboard_port": dashboard_port, "package_mb": working_dir_package_mb(),
                           "results_mb": folder_mb(ROOT / "benchmarks" / "results")}
    t0 = time.time()
    single: subprocess.Popen | None = None
    try:
        cluster.start()
        rec["gcs_port"] = cluster.gcs_port
        rec["head_started_s"] = time.time() - t0
        request_gpu_nodes(cluster.gcs_address, gpu_nodes)
        wait_for_nodes(cluster.url, "worker.gpu", gpu_nodes, timeout_s=300)
        rec["submitted_s"] = time.time() - t0
        if single_alongside:
            single = single_node_run(study, work / "single", work / "single.log")
        rc, wall, lines, kill = run_job(cluster, command, results, t0, study, KILL_IN, timeout_s)
        rec.update(exit_status=rc, job_wall_s=wall, log=[[round(t, 1), line] for t, line in lines],
                   kill=None if kill is None else kill.__dict__)
        rec["job"] = job_info(cluster.url, lines)
        rec["nodes"] = [{"node_id": n.node_id, "kind": node_kind(n), "state": n.state,
                         "start_s": n.start_time_ms / 1000 - t0 if n.start_time_ms else None,
                         "end_s": n.end_time_ms / 1000 - t0 if n.end_time_ms else None}
                        for n in list_nodes(cluster.url)]
        rec["retried"] = [{"task_id": a.task_id, "attempt": a.attempt_number, "state": a.state, "node_id": a.node_id}
                          for a in train_attempts(cluster.url) if a.attempt_number > 0 or a.state == "FAILED"]
    except BaseException:
        if single is not None:
            single.terminate()
            single.wait()
        raise
    finally:
        left = cluster.stop()
        rec["left_behind"] = [f"{p.pid} {p.cmdline[:120]}" for p in left]
        rec["stopped_s"] = time.time() - t0
        if not left and cluster.temp_dir is not None:  # its sockets and logs; kept when something still runs
            shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    out = next((p for p in sorted(results.iterdir()) if p.is_dir()), None) if results.exists() else None
    rec["out"] = str(out) if out else None
    order = cell_names(rec.get("log", []))
    rec["layouts"] = dict(sorted(cell_layouts(out).items(), key=lambda kv: order.index(kv[0]) if kv[0] in order
                                 else len(order))) if out else {}
    started = time.time()
    single = single or single_node_run(study, work / "single", work / "single.log")
    single.wait(timeout=1800)
    rec["single_exit_status"] = single.returncode
    rec["single_wall_s"] = None if single_alongside else time.time() - started
    rec["single_tail"] = (work / "single.log").read_text()[-3000:] if single.returncode else ""
    rec["row_diff"] = compare_rows(out, work / "single") if out and single.returncode == 0 else {}
    rec["checks"] = checks(rec)
    return rec


def job_info(url: str, lines: list[tuple[float, str]]) -> dict[str, Any]:
    from ray.job_submission import JobSubmissionClient

    sub = next((m.group(1) for _, line in lines if (m := re.search(r"Job '(raysubmit_\w+)' submitted", line))), None)
    if sub is None:
        return {}
    info = JobSubmissionClient(url).get_job_info(sub)
    return {"submission_id": sub, "status": str(info.status), "message": info.message,
            "duration_s": (info.end_time - info.start_time) / 1000 if info.end_time and info.start_time else None}


def cell_layouts(out: Path) -> dict[str, Any]:
    """Each cell's ``_state/layout.json`` (written after its round 1)."""
    return {p.name: json.loads((p / "_state" / "layout.json").read_text())
            for p in sorted(out.iterdir()) if (p / "_state" / "layout.json").exists()}


def checks(rec: dict[str, Any]) -> dict[str, bool]:
    """The issue's requirements, each True or False."""
    nodes = {n["node_id"]: n for n in rec.get("nodes", [])}
    layouts = rec.get("layouts", {})
    log = [line for _, line in rec.get("log", [])]
    submitted = rec.get("submitted_s", float("inf"))
    grown = [n for n in nodes.values() if n["kind"] == "worker.cpu" and (n["start_s"] or 0) > submitted]
    pending_cells = [c for c, lay in layouts.items() if lay.get("pending_workers")]
    trainer_on_gpu = [c for c, lay in layouts.items() if lay["trainer"]["bundle"].get("GPU") == 1
                      and nodes.get(lay["trainer"]["node_id"], {}).get("kind") == "worker.gpu"]
    gpu_cpu_workers = [c for c, lay in layouts.items() for n in lay["nodes"]
                       if n["gpus"] >= 1 and not n["trainer"] and n["device"] == "cpu" and n["workers"] >= 1]
    kill = rec.get("kill")
    restarts = [RESTART_LINE.search(line) for line in log]
    return {
        "job succeeded (exit status 0, status SUCCEEDED)": rec.get("exit_status") == 0
        and rec.get("job", {}).get("status", "").endswith("SUCCEEDED"),
        "workers beyond the head were pending demand, and a CPU node came for them": bool(pending_cells and grown),
        "a worker node was killed in the middle of a cell": bool(kill and 1 <= kill["rounds_done"] < kill["cell_rounds"]),
        "the pool logged the restart with its round": bool(kill) and any(
            m and kill["rounds_done"] < int(m.group(1)) <= kill["cell_rounds"] for m in restarts),
        "mask trainer's GPU bundle on a (fake) GPU node": bool(trainer_on_gpu),
        "another GPU node's client workers fell back to CPU, with the warning": bool(gpu_cpu_workers)
        and any(FALLBACK_NOTE in line and "WARNING" in line for line in log),
        "every non-timing column equals the single-node run": rec.get("single_exit_status") == 0
        and bool(rec.get("row_diff")) and not any(rec["row_diff"].values()),
        "no process of the cluster left behind": not rec.get("left_behind"),
    }


def round_lines(rec: dict[str, Any], cell: int) -> list[tuple[int, float, str]]:
    """(round, second read, line) of each round line of cell ``cell`` (1-based) in the job's log."""
    out, current = [], 0
    for t, line in rec.get("log", []):
        if m := CELL_LINE.match(line):
            current = int(m.group(1))
        elif current == cell and (m := ROUND_LINE.match(line)):
            out.append((int(m.group(1)), t, line))
    return out


def kill_cell(rec: dict[str, Any]) -> str | None:
    """The name of the cell the node was killed in, as the log started it."""
    kill = rec.get("kill")
    names = cell_names(rec.get("log", []))
    return names[kill["cell"] - 1] if kill and len(names) >= kill["cell"] else None


# ----- the record ------------------------------------------------------------------------------------
def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def record_markdown(rec: dict[str, Any], argv: list[str]) -> str:
    nodes = sorted(rec.get("nodes", []), key=lambda n: n["start_s"] or 0)
    short = {n["node_id"]: f"{n['kind']} {n['node_id'][-5:]}" for n in nodes}
    kill = rec.get("kill")
    log = [(t, line) for t, line in rec.get("log", [])]
    lines = [
        "# The cluster path on one machine (issue 34)",
        "",
        f"`{command_line(__file__, argv)}`, {datetime.date.today().isoformat()}. The study "
        f"`{rec['study']}` (3 cells, `workers: 3`) submitted as a Ray Job to `cluster/cluster-local.yaml` "
        f"(Ray's autoscaler with the fake_multinode provider: worker nodes are local Ray nodes, the GPU a "
        f"Ray resource only) by the cron command of `cluster/README.md`, file names changed:",
        "",
        "```",
        rec["command"],
        "```",
        "",
        f"Times are seconds since the head was started (`ray start --head --num-cpus 1`), wall clock on a "
        f"shared 2-core machine; the job was submitted at {_s(rec.get('submitted_s'))} s, after asking the "
        f"autoscaler for two GPU nodes (`request_resources`, as cluster/README.md does for GPU client workers).",
        "",
        "## Checks",
        "",
        markdown_table(["requirement", "met"], [(k, "yes" if v else "**no**") for k, v in rec["checks"].items()]),
        "",
        "## Nodes the autoscaler started",
        "",
        markdown_table(["node", "kind", "up at s", "gone at s", "how it ended"],
                       [(n["node_id"][-5:], n["kind"], _s(n["start_s"]), _s(n["end_s"]),
                         "killed (SIGKILL, mid-cell)" if kill and n["node_id"] == kill["node_id"] else
                         "up until the cluster was stopped" if n["state"] == "ALIVE" else
                         "removed by the autoscaler") for n in nodes], align="llrrl"),
        "",
        "## Layout of each cell",
        "",
    ]
    for cell, lay in rec.get("layouts", {}).items():
        per = [f"{short.get(n['node_id'], n['node_id'][-5:])}: {n['workers']} x {n['device']}"
               for n in lay["nodes"] if n["workers"]]
        placed = ", ".join(short.get(i, i[-5:]) for i in lay.get("worker_nodes", []))
        pending = lay.get("pending_workers") or 0
        per += [f"{pending} pending (1 CPU each, on no node yet)"] if pending else []
        lines.append(f"- `{cell}`: mask trainer {lay['trainer']['bundle']} on "
                     f"{short.get(lay['trainer']['node_id'], '?')}; client workers planned: {'; '.join(per)}; "
                     f"in round 1 they ran on: {placed}.")
        lines += [f"  - warning: {note}" for note in lay.get("notes", [])]
    lines += ["", "## The lost node", ""]
    if kill:
        cell = kill_cell(rec)
        dead = next((n["end_s"] for n in nodes if n["node_id"] == kill["node_id"]), None)
        when = ("while its client worker's process was computing, i.e. in a round's client training"
                if kill["while_training"] else "though its client worker's process was not seen computing")
        lines += [f"{short.get(kill['node_id'], kill['node_id'][-5:])} was killed at {kill['t']:.0f} s (its "
                  f"raylet, the raylet's processes and its log monitor: {len(kill['pids'])} processes, SIGKILL) in "
                  f"cell {kill['cell']} (`{cell or '?'}`) with {kill['rounds_done']} of its "
                  f"{kill['cell_rounds']} rounds done, {when}. The cluster marked the node dead at "
                  f"{_s(dead)} s. What the job logged about its client worker:", ""]
        found = [(m, line.split(": ", 1)[-1]) for _, line in log if (m := RESTART_LINE.search(line))]
        lines += [f"- {text}" for _, text in found] or ["- (no restart line)"]
        clients = {r: float(m.group(1)) for r, _, line in round_lines(rec, kill["cell"])
                   if (m := re.search(r"clients ([\d.]+)s", line))}
        lost = int(found[0][0].group(1)) if found else None
        if lost in clients:
            others = sorted(v for r, v in clients.items() if r != lost)
            lines += ["", f"Round {lost}'s client phase took {clients[lost]:.1f} s against "
                          f"{statistics.median(others):.1f} s (median) in the cell's other rounds: the time to find "
                          f"the worker gone and to train its clients again on a new worker, on the node the "
                          f"autoscaler started for it (nodes table)." if others else ""]
        retried = [f"{r['state']} attempt {r['attempt']} on {short.get(r['node_id'], str(r['node_id'])[-5:])}"
                   for r in sorted(rec.get("retried", []), key=lambda r: r["attempt"])]
        lines += ["", "Ray's own attempts of training calls that failed (the state API): "
                      f"{', '.join(retried) or 'none'}: Ray retries a call (3 times) while the worker is "
                      "\"unavailable\", before the cluster marks its node dead, and the pool makes it again (Ray's "
                      "retries anew) until it finds the node gone and replaces the worker."]
    else:
        lines.append(f"No node was killed: no CPU worker node hosting a client worker of cell "
                     f"{KILL_IN} was found (the state API) while the cell had a round to go.")
    job = rec.get("job", {})
    lines += ["", "## The job", "",
              f"`ray job submit` exit status {rec.get('exit_status')}, job {job.get('submission_id')} "
              f"{job.get('status')}; wall time {rec.get('job_wall_s', 0):.0f} s (the job itself "
              f"{_s(job.get('duration_s'))} s). Working-dir package: {rec['package_mb']:.2f} MB "
              f"(`.rayignore` leaves out `benchmarks/results/`, {rec['results_mb']:.0f} MB on disk).",
              "", "Rows: every column but the `t_*` times, `peak_rss_mb` and `mem_pss_mb`, cell by cell, against "
              "`skymask-ray bench` of the same study on a local one-node Ray:", ""]
    lines += [f"- `{cell}`: {'equal' if not diff else 'differs: ' + ', '.join(diff[:8])}"
              for cell, diff in rec.get("row_diff", {}).items()] or ["- (not compared)"]
    lines += ["", f"Processes of the cluster left after stopping it: {len(rec.get('left_behind', []))}.",
              "", "## The job's log", "",
              "Cells, rounds and warnings as `cron.log` got them, with the second each line was read here (a "
              "line reaches `ray job submit` a second or more after the job prints it). Left out: "
              "`ray job submit`'s own lines, and the autoscaler's event lines (`(autoscaler +Ns) ...`): on this "
              "one-machine cluster every node's log monitor reads the head's one `monitor.log`, so each event "
              "shows up once per node, and a node that joins replays the file from its start (the nodes "
              "table above has the times from the cluster's own record).", "", "```"]
    lines += [f"{t:6.0f}  {line}" for t, line in log if line.strip() and not QUIET.search(line)]
    lines += ["```", ""]
    return "\n".join(lines)


@script(__doc__)
@click.option("--work", type=click.Path(path_type=Path),
              help="Folder for the job's results, the cron log, the single-node run (default: a new temporary folder).")
@click.option("--study", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=STUDY,
              help="Study file.")
@click.option("--dashboard-port", type=click.IntRange(1, 65535), default=8265,
              help="The cron line's port (another changes the line).")
@click.option("--gpu-nodes", type=click.IntRange(0), default=2, help="GPU nodes asked for before submitting.")
@click.option("--timeout", type=click.FloatRange(min=1.0), default=1500.0, help="Seconds the job may take.")
@click.option("--single-alongside", is_flag=True,
              help="Run the one-node comparison while the job runs (quicker; the job's times then share the "
                   "machine with it).")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), default=results_path("cluster_local.md"),
              help="The Markdown record (its .json beside it).")
def main(work: Path | None, study: Path, dashboard_port: int, gpu_nodes: int, timeout: float,
         single_alongside: bool, record: Path) -> None:
    if free_port(dashboard_port) != dashboard_port:
        raise click.BadParameter(f"port {dashboard_port} is in use (another Ray dashboard?); the cron line names "
                                 f"it: free it or pass --dashboard-port", param_hint="--dashboard-port")
    work = work or Path(tempfile.mkdtemp(prefix="cluster-local-"))
    rec = run(work, study.resolve(), dashboard_port, gpu_nodes, timeout, single_alongside)
    atomic_write_text(record, record_markdown(rec, sys.argv[1:]))
    atomic_write_text(record.with_suffix(".json"), json.dumps(rec, indent=1) + "\n")
    for name, ok in rec["checks"].items():
        click.echo(f"{'ok  ' if ok else 'FAIL'} {name}")
    click.echo(f"wrote {record} (work folder {work})")
    if not all(rec["checks"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
