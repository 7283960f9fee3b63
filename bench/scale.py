"""Scale benchmark (issue 19): analysis jobs per minute with 1, 2 and 4 worker processes on
SQLite and on PostgreSQL, and ingest with 1 and 4 receivers, all in one run on the same studies.

STUDIES phantom CECT studies (4 phases and a reader's SEG, SLICES slices of MATRIX² pixels) are
generated once. PostgreSQL is a throwaway cluster started as the tests start theirs
(tests/pg_support.py: fsync off, so it measures the database's work, not the disk's).

- Analysis: each study is stored by a receiver (`--role receiver`), then one `--role worker`
  node with `[worker] processes = N` analyses them all. Jobs per minute = studies / (last job
  finished - first job started), from the jobs table (the watcher's stable delay excluded).
- Ingest: the studies' files split over R receivers (`--role receiver`, one data directory, one
  PostgreSQL), one storescu per receiver at once; instances per second = files / wall time until
  the last storescu returns (every instance acknowledged, so stored). SQLite with 1 receiver for
  comparison (SQLite serves one host, so several receivers are not measured on it).

    python bench/scale.py [--studies 6] [--slices 8] [--matrix 64]

Ratios are measured in the same run on the same machine; on a 2-core machine more than two
worker processes cannot add CPU, and the figure says so.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import NodeProcess, free_port, wait_until  # noqa: E402
from pg_support import missing, start_server  # noqa: E402

from hccnode.phantom import StudySpec, generate  # noqa: E402


def node(work: Path, name: str, data: Path, url: str, **sections) -> NodeProcess:
    d = work / name
    d.mkdir()
    n = NodeProcess(d, node={"data_dir": str(data)}, **({"store": {"url": url}} if url else {}), **sections)
    n.data_dir = data
    return n


def start(n: NodeProcess, role: str) -> NodeProcess:
    n.start(wait=False, role=role)
    wait_until(lambda: "node.ready" in n.log() or n.proc.poll() is not None, 120, what=f"{role} ready")
    if n.proc.poll() is not None:
        raise RuntimeError(f"{role} did not start: {n.log()[-2000:]}")
    return n


def send(receivers: list[NodeProcess], files: list[str]) -> float:
    """Files split over the receivers, one storescu each, all at once; wall seconds."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-R", "-aec", "HCCNODE", "127.0.0.1", str(r.port), *files[i::len(receivers)]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i, r in enumerate(receivers)]
    for p in procs:
        if p.wait(600):
            raise RuntimeError(f"storescu failed: {p.stderr.read().decode()[-500:]}")
    return time.perf_counter() - t0


def jobs_done(worker: NodeProcess, tag: str, studies: int) -> list[dict]:
    """Wait until the worker has ended `studies` jobs; their rows, every one done."""
    store = worker.store()
    try:
        wait_until(lambda: store.query("SELECT COUNT(*) AS n FROM jobs WHERE state IN ('done', 'failed',"
                                       " 'not_applicable')")[0]["n"] >= studies, 1800, interval=0.5, what="jobs")
        jobs = store.query("SELECT state, started_at, finished_at FROM jobs")
    finally:
        store.close()
    if any(j["state"] != "done" for j in jobs):
        raise RuntimeError(f"{tag}: not every job done: {[j['state'] for j in jobs]}")
    return jobs


def analysis_rate(work: Path, tag: str, url: str, files: list[str], studies: int, processes: int,
                  data_root: Path | None = None) -> float:
    """Jobs per minute; the data directory under `data_root` (default: `work`)."""
    data = (data_root or work) / f"{tag}-data"
    receiver = start(node(work, f"{tag}-receiver", data, url, study={"stable_seconds": 3600.0}), "receiver")
    send([receiver], files)
    receiver.stop()
    worker = start(node(work, f"{tag}-worker", data, url, study={"stable_seconds": 0.5},
                        worker={"processes": processes, "lease_seconds": 60.0}), "worker")
    try:
        jobs = jobs_done(worker, tag, studies)
    finally:
        worker.stop()
    span = max(j["finished_at"] for j in jobs) - min(j["started_at"] for j in jobs)
    return len(jobs) / span * 60


def ingest_rate(work: Path, tag: str, url: str, files: list[str], receivers: int,
                data_root: Path | None = None) -> float:
    """Instances per second; the data directory under `data_root` (default: `work`)."""
    data = (data_root or work) / f"{tag}-data"
    nodes = [start(node(work, f"{tag}-r{i}", data, url, study={"stable_seconds": 3600.0}), "receiver")
             for i in range(receivers)]
    try:
        seconds = send(nodes, files)
        store = nodes[0].store()
        indexed = store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
        store.close()
    finally:
        for n in nodes:
            n.stop()
    if indexed != len(files):
        raise RuntimeError(f"{tag}: {indexed} of {len(files)} instances indexed")
    return len(files) / seconds


def make_studies(work: Path, studies: int, slices: int, matrix: int) -> list[str]:
    """The phantom CECT studies' files (4 phases and a reader's SEG each), generated under `work`."""
    files: list[str] = []
    for i in range(studies):
        generate(StudySpec(kind="cect", seed=100 + i, slices=slices, matrix=matrix, noise_sd=2.0,
                           seg_phase="equilibrium"), work / f"study{i}")
        files += sorted(str(p) for p in (work / f"study{i}").rglob("*.dcm"))
    return files


def arguments(description: str, workers: str = "1,2,4") -> argparse.ArgumentParser:
    """The options of the studies sent and of the worker and receiver counts tried (this bench's
    and bench/sharedfs.py's)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--studies", type=int, default=6)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--matrix", type=int, default=64)
    ap.add_argument("--workers", default=workers, help="worker process counts, comma-separated")
    ap.add_argument("--receivers", default="1,4", help="receiver counts, comma-separated")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0]).parse_args(argv)
    problem = missing()
    if problem:
        print(f"scale: {problem}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hccnode-scale-"))
    server = start_server(free_port)
    try:
        files = make_studies(work, args.studies, args.slices, args.matrix)
        print(f"{args.studies} studies, {len(files)} instances ({args.slices} slices of {args.matrix}² per phase)")
        engines = {"sqlite": lambda: "", "postgresql": lambda: server.url(server.create_database())}
        for w in map(int, args.workers.split(",")):
            for engine, url in engines.items():
                rate = analysis_rate(work, f"a-{engine}-{w}", url(), files, args.studies, w)
                print(f"analysis  {engine:10s} {w} worker process(es): {rate:6.1f} jobs/min", flush=True)
        print(f"ingest    sqlite     1 receiver(s): {ingest_rate(work, 'i-sqlite-1', '', files, 1):6.1f} instances/s")
        for r in map(int, args.receivers.split(",")):
            rate = ingest_rate(work, f"i-pg-{r}", engines["postgresql"](), files, r)
            print(f"ingest    postgresql {r} receiver(s): {rate:6.1f} instances/s", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
