"""End-to-end benchmark (issue 8): from the last instance of a 4-phase CECT study stored in the
node to its SR, ECV Parametric Map and SEG stored in a real Orthanc.

A phantom study (4 phases x 200 slices of 512 x 512, with a reader's SEG on the equilibrium
phase) is sent with dcmtk's storescu to a running `hccnode serve` that forwards to Orthanc. The
clock starts when storescu returns (the node has answered the last C-STORE, so the instance is
stored) and stops when Orthanc holds the SR, the map and the SEG. Each of the 3 runs uses a fresh
node data directory and a fresh Orthanc. Prints the median wall time (also without the
configured stable delay, which is waiting by design) and the node's peak RSS: the main process
and the largest worker process (the analysis runs in worker processes).

    python bench/e2e.py [--slices 200] [--matrix 512] [--runs 3] [--stable 2.0]

Target (issue 8): <= 10 s plus the stable delay on the 2-core reference machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import NodeProcess, Orthanc, wait_until  # noqa: E402

WANTED = {"1.2.840.10008.5.1.4.1.1.88.34": "SR", "1.2.840.10008.5.1.4.1.1.30": "PM",
          "1.2.840.10008.5.1.4.1.1.66.4": "SEG"}


def vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for k in kids:
            out += [k, *descendants(k)]
    return out


class Arrivals:
    """The wanted objects Orthanc holds; each instance's tags are fetched once (polling every
    instance's tags each time would load the 2-core machine the node runs on)."""

    def __init__(self, orthanc: Orthanc):
        self.orthanc = orthanc
        self.seen: set[str] = set()
        self.found: set[str] = set()

    def sop_class(self, iid: str) -> str | None:
        """The instance's SOP Class UID from Orthanc's index (its `SopClassUid` metadata), not from
        its tags: those Orthanc reads from the stored file, 210 MB for the map, which would add
        the time of that read to what is measured."""
        url = f"http://127.0.0.1:{self.orthanc.http_port}/instances/{iid}/metadata/SopClassUid"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:  # plain text, not JSON
                return r.read().decode().strip()
        except OSError:  # an Orthanc without that metadata: the file's tags
            return self.orthanc.get(f"/instances/{iid}/simplified-tags").get("SOPClassUID")

    def poll(self) -> set[str]:
        for iid in self.orthanc.get("/instances"):
            if iid not in self.seen:
                self.seen.add(iid)
                uid = self.sop_class(iid)
                if uid in WANTED:
                    self.found.add(WANTED[uid])
        return self.found


def job_finished(data_dir: Path) -> bool:
    with sqlite3.connect(data_dir / "hccnode.db") as db:
        row = db.execute("SELECT finished_at FROM jobs ORDER BY id DESC LIMIT 1").fetchone()
    return bool(row and row[0])


def timeline(data_dir: Path, t0_wall: float) -> str:
    """Where the time went, from the node's own records (seconds after the last instance was
    stored): job queued, started, finished (with the pipeline's steps, the summary included), last
    of SEG / map / SR sent (they are queued as written, before the summary)."""
    with sqlite3.connect(data_dir / "hccnode.db") as db:
        job = db.execute("SELECT created_at, started_at, finished_at, result FROM jobs ORDER BY id DESC LIMIT 1").fetchone()
        sent = db.execute("SELECT MAX(sent_at) FROM outbox WHERE path NOT LIKE '%summary%'").fetchone()[0]
        rows = db.execute("SELECT path, created_at, sent_at FROM outbox ORDER BY id").fetchall()
    if job is None:
        return "no job recorded"
    steps = json.loads(job[3] or "{}").get("seconds", {})
    return (f"queued +{job[0] - t0_wall:.1f} s, started +{job[1] - t0_wall:.1f} s, analysed +{job[2] - t0_wall:.1f} s "
            f"({', '.join(f'{k} {v:.1f}' for k, v in steps.items())}), SEG/PM/SR sent +{(sent or t0_wall) - t0_wall:.1f} s"
            "; each output queued -> sent: " + ", ".join(
                f"{Path(p).stem} +{c - t0_wall:.1f} -> +{(s or t0_wall) - t0_wall:.1f}" for p, c, s in rows))


def one_run(work: Path, files: list[str], labs_csv: Path, stable: float, pacs_pdu: int = 0) -> tuple[float, float, float]:
    (work / "orthanc").mkdir(parents=True)
    (work / "node").mkdir()
    orthanc = Orthanc(work / "orthanc", {"MaximumPduLength": pacs_pdu} if pacs_pdu else None).start()
    node = NodeProcess(work / "node", study={"stable_seconds": stable}, worker={"processes": 0, "lease_seconds": 120.0},
                       forward={"destinations": [orthanc.destination]}, log={"level": "WARNING"})
    try:
        node.start()
        imported = node.cli("labs", "import", str(labs_csv))  # the hematocrit, so the ECV map is made
        if imported.returncode != 0:
            raise RuntimeError(f"labs import failed: {imported.stdout} {imported.stderr}")
        subprocess.run(["storescu", "-R", "-aec", "HCCNODE", "127.0.0.1", str(node.port), *files], check=True,
                       capture_output=True, timeout=900)
        t0, t0_wall = time.perf_counter(), time.time()
        pids = {"node": [node.proc.pid], "workers": descendants(node.proc.pid), "Orthanc": [orthanc.proc.pid]}
        cpu0 = {k: sum(map(cpu_seconds, p)) for k, p in pids.items()}
        arrivals = Arrivals(orthanc)
        wait_until(lambda: arrivals.poll() >= set(WANTED.values()), 600, interval=0.2, what="SR, PM and SEG in Orthanc")
        wall = time.perf_counter() - t0
        used = ", ".join(f"{k} {sum(map(cpu_seconds, p)) - cpu0[k]:.1f}" for k, p in pids.items())
        main_rss = vm_hwm_mb(node.proc.pid)
        worker_rss = max((vm_hwm_mb(p) for p in descendants(node.proc.pid)), default=0.0)
        wait_until(lambda: job_finished(node.data_dir), 120, interval=0.2, what="the job to finish (summary included)")
        print(f"  {timeline(node.data_dir, t0_wall)}; CPU seconds until then: {used}")
        return wall, main_rss, worker_rss
    finally:
        node.stop()
        orthanc.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stable", type=float, default=2.0, help="[study] stable_seconds of the node")
    ap.add_argument("--pacs-pdu", type=int, default=0,
                    help="Orthanc's MaximumPduLength, the largest PDU the node may send it (0: Orthanc's default, 16384)")
    args = ap.parse_args(argv)
    from hccnode.phantom import StudySpec, generate

    tmp = Path(tempfile.mkdtemp(prefix="hccnode-bench-e2e-"))
    try:
        t = time.perf_counter()
        truth = generate(StudySpec(kind="cect", seed=7, slices=args.slices, matrix=args.matrix, noise_sd=10.0,
                                   seg_phase="equilibrium"), tmp / "phantom")
        drawn = datetime.fromisoformat(truth.data["studies"][0]["series"][0]["acquisition_start"]) - timedelta(hours=2)
        labs_csv = tmp / "labs.csv"
        labs_csv.write_text("patient_id,issuer,test,value,unit,time\n"
                            f"{truth.data['patient']['id']},HCCNODE-PHANTOM,hct,40,%,{drawn.isoformat(timespec='minutes')}\n")
        files = sorted(str(p) for p in (tmp / "phantom").rglob("*.dcm"))
        mb = sum(Path(f).stat().st_size for f in files) / 1e6
        print(f"phantom: 4 phases x {args.slices} slices {args.matrix}x{args.matrix} + reader SEG, {len(files)} files, "
              f"{mb:.0f} MB (generated in {time.perf_counter() - t:.0f} s)")
        walls, mains, workers = [], [], []
        for r in range(args.runs):
            wall, main_rss, worker_rss = one_run(tmp / f"run{r}", files, labs_csv, args.stable, args.pacs_pdu)
            walls.append(wall)
            mains.append(main_rss)
            workers.append(worker_rss)
            print(f"run {r + 1}: {wall:.1f} s from last instance stored to SR+PM+SEG in Orthanc "
                  f"({wall - args.stable:.1f} s without the {args.stable:g} s stable delay); peak RSS node "
                  f"{main_rss:.0f} MB, worker {worker_rss:.0f} MB")
            shutil.rmtree(tmp / f"run{r}", ignore_errors=True)
        med = statistics.median(walls)
        print(f"median wall time: {med:.1f} s ({med - args.stable:.1f} s + {args.stable:g} s stable delay; "
              f"target <= 10 s + stable delay)")
        print(f"peak RSS: node main process {max(mains):.0f} MB, largest worker process {max(workers):.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
