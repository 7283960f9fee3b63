"""Job queue benchmark (issue 19): the store's job functions on SQLite and on PostgreSQL, same run.

- Claims per second: JOBS studies queued, then P worker processes (1 and 4) each loop
  `jobs.claim` -> `jobs.heartbeat` -> `jobs.complete` until nothing is left; rate = JOBS / wall time
  from the moment all workers are ready until the last exits. No analysis runs: this is the queue's
  own cost per job (every transition also appends to the audit chain, as in the node).
- Recovery: a worker process named as if on another host (so its PID cannot be checked) claims a
  job with a LEASE-second lease, heartbeats every LEASE/3 and is killed -9; the time from the kill
  until another claimer gets that job. Expected at most LEASE (the heartbeat goes stale then).

    python bench/jobqueue.py [--jobs 200] [--lease 2]

PostgreSQL is a throwaway cluster (tests/pg_support.py: fsync off, so it measures the database's
work, not the disk's). Ratios only mean something within one run on one machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import free_port  # noqa: E402
from pg_support import missing, start_server  # noqa: E402

from hccnode.store import jobs  # noqa: E402
from hccnode.store.db import Store  # noqa: E402


def _fill(store: Store, n: int) -> None:
    t = jobs.now() - 1000
    with store.tx() as c:
        c.executemany("INSERT INTO studies (study_uid, first_received, last_received, seq) VALUES (?,?,?,1)",
                      [(f"1.2.826.0.1.{i}", t, t) for i in range(n)])
    assert len(jobs.queue_stable_studies(store, 5)) == n


def _worker(data: str, url: str, index: int, ready, go) -> None:
    store = Store(data, url=url)
    owner = jobs.worker_owner(index)
    ready.release()
    go.wait()
    for _ in range(100_000):
        job = jobs.claim(store, owner, 60)
        if job is None:
            break
        jobs.heartbeat(store, job.id, owner, 60)
        jobs.complete(store, job.id, owner, {})
    store.close()


def claims_per_second(data: str, url: str, n: int, processes: int) -> float:
    store = Store(data, url=url)
    _fill(store, n)
    ctx = mp.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(data, url, i, ready, go)) for i in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=120)
    t0 = time.perf_counter()
    go.set()
    for p in procs:
        p.join(600)
    wall = time.perf_counter() - t0
    done = jobs.counts(store).get("done", 0)
    store.close()
    assert done == n, f"{done} of {n} jobs done"
    return n / wall


def _holder(data: str, url: str, lease_seconds: float, claimed) -> None:
    store = Store(data, url=url)
    owner = f"elsewhere:{os.getpid()}:1/0"   # another host: its PID cannot be checked from here
    job = jobs.claim(store, owner, lease_seconds)
    claimed.put(job.id)
    for _ in range(100_000):              # heartbeat until killed
        time.sleep(lease_seconds / 3)
        jobs.heartbeat(store, job.id, owner, lease_seconds)


def recovery_seconds(data: str, url: str, lease_seconds: float) -> float:
    store = Store(data, url=url)
    _fill(store, 1)
    ctx = mp.get_context("spawn")
    claimed = ctx.Queue()
    p = ctx.Process(target=_holder, args=(data, url, lease_seconds, claimed))
    p.start()
    job_id = claimed.get(timeout=120)
    time.sleep(lease_seconds / 2)
    os.kill(p.pid, signal.SIGKILL)
    t0 = time.perf_counter()
    p.join(30)
    for _ in range(int(20 * lease_seconds / 0.02)):
        job = jobs.claim(store, "rescuer", lease_seconds)
        if job is not None:
            assert job.id == job_id and job.attempts == 2
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the killed worker's job was never claimed again")
    took = time.perf_counter() - t0
    store.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--lease", type=float, default=2.0)
    args = ap.parse_args()
    why = missing()
    if why:
        sys.exit(why)
    server = start_server(free_port)
    names = iter(range(1, 100))
    try:
        with tempfile.TemporaryDirectory(prefix="hccnode-bench-queue-") as tmp:
            def place(engine: str) -> tuple[str, str]:
                k = next(names)
                return str(Path(tmp) / f"d{k}"), (server.url(server.create_database()) if engine == "postgresql" else "")

            for engine in ("sqlite", "postgresql"):
                for processes in (1, 4):
                    rate = claims_per_second(*place(engine), args.jobs, processes)
                    print(f"{engine:10s} {processes} worker process(es): {rate:7.1f} jobs claimed+done per second")
                took = recovery_seconds(*place(engine), args.lease)
                print(f"{engine:10s} killed worker on another host, lease {args.lease:g} s: job claimed again after {took:.2f} s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
