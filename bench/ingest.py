"""Ingest benchmark (issue 18): the node against the durable minimum and Orthanc, in the same run.

Generates 300 CT instances of 512x512 (about 160 MB) and sends them with dcmtk's storescu over
loopback to three receivers, each started fresh on an empty folder for every measurement:
  - the node (`hccnode serve` on its defaults: the file written durably, fsync of its directory,
    index and audit rows), measured once it has started (its analysis process's start-up imports,
    a few seconds of a processor, done: `worker.warm`);
  - the durable minimum (`bench/durable_scp.py`: the bytes to a temp file, fsync, rename, fsync
    of the directory, one SQLite row committed in WAL mode with synchronous=FULL);
  - Orthanc (one association only).
With one association, then 4 and 8 concurrent ones (the instances split between them). The
receivers alternate within each round (the order rotates from round to round), after one send to
the node and to the durable minimum that is not counted (the first measurement of a run pays for
cold caches). Prints every round, then the medians and the targets:
  node / durable minimum >= 0.9 (one association), node / Orthanc >= 4,
  node >= durable minimum with 4 and with 8 associations, node peak RSS < 300 MB.

Both pynetdicom receivers accept PDUs up to --pdu bytes (the node's [node] max_pdu; 0: no limit).

    python bench/ingest.py [--instances 300] [--rounds 3] [--size 512] [--pdu 131072] [--no-orthanc]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import NodeProcess, Orthanc, free_port, wait_until  # noqa: E402
from dicomgen import ct_series  # noqa: E402
from hccnode.config import NodeSection  # noqa: E402

CONCURRENCY = (1, 4, 8)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process `pid` has used (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_send(pids: list[int], port: int, files: list[Path], associations: int, cpu: list[float]) -> float:
    """`send`, and the receiver's CPU milliseconds per instance (its processes `pids` together)
    appended to `cpu`."""
    before = sum(map(cpu_seconds, pids))
    rate = send(port, files, associations)
    cpu.append((sum(map(cpu_seconds, pids)) - before) / len(files) * 1e3)
    return rate


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def receiver_pids(node: NodeProcess) -> list[int]:
    """The node's process and its other receiver processes (their `receiver.started` events),
    once all [node] receiver_processes have started."""
    n = node.cfg["node"].get("receiver_processes", NodeSection.receiver_processes)
    found: list[int] = []

    def started() -> bool:
        found[:] = [int(m) for m in re.findall(r"receiver\.started pid=(\d+)", node.events())]
        return len(found) >= n - 1
    wait_until(started, 60, what="the node's receiver processes")
    return [node.proc.pid, *found]


# Added to storescu's environment (bench/small_instances.py sets TCP_NODELAY here).
SENDER_ENV: dict[str, str] = {}


def send(port: int, files: list[Path], associations: int) -> float:
    """Images per second: `files` split into `associations` storescu runs at once."""
    chunks = [files[i::associations] for i in range(associations)]
    t = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aec", "ANY-SCP", "127.0.0.1", str(port), *map(str, chunk)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **SENDER_ENV})
             for chunk in chunks]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - t
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return len(files) / elapsed


def echo_ok(port: int) -> bool:
    return subprocess.run(["echoscu", "-aec", "ANY-SCP", "127.0.0.1", str(port)], capture_output=True).returncode == 0


def run_node(work: Path, files: list[Path], associations: int, pdu: int, cpu: list[float],
             node_options: dict) -> tuple[float, float]:
    """The node started (its receiver processes, and its analysis process done with its start-up
    imports: `worker.warm`), then the send measured."""
    events = work / "node-events.log"
    node = NodeProcess(work, node={"max_pdu": pdu, **node_options}, study={"stable_seconds": 600.0},
                       worker={"processes": 1}, log={"file": str(events)})
    node.start()
    try:
        pids = receiver_pids(node)
        wait_until(lambda: "worker.warm" in node.events(), 120, what="the analysis process's start-up")
        rate = timed_send(pids, node.port, files, associations, cpu)
        rss = sum(map(peak_rss_mb, pids))
        with sqlite3.connect(node.data_dir / "hccnode.db") as db:
            indexed = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        if indexed != len(files):
            raise RuntimeError(f"node indexed {indexed} of {len(files)}")
        return rate, rss
    finally:
        node.stop()


def run_durable(work: Path, files: list[Path], associations: int, pdu: int, cpu: list[float]) -> float:
    port, out = free_port(), work / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "durable_scp.py"), str(out), str(port), str(pdu)])
    try:
        wait_until(lambda: echo_ok(port), 30, what="durable minimum SCP")
        rate = timed_send([proc.pid], port, files, associations, cpu)
        if len(list(out.glob("*.dcm"))) != len(files):
            raise RuntimeError("durable minimum did not store every instance")
        return rate
    finally:
        proc.terminate()
        proc.wait(30)


def open_orthanc(work: Path) -> Orthanc:
    """An Orthanc started in `work` that stores what any calling AE title from any host sends."""
    return Orthanc(work, extra={"DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
                                "DicomCheckModalityHost": False}).start()


def run_orthanc(work: Path, files: list[Path], associations: int) -> float:
    orthanc = open_orthanc(work)
    try:
        rate = send(orthanc.dicom_port, files, associations)
        stored = orthanc.get("/statistics")["CountInstances"]
        if stored != len(files):
            raise RuntimeError(f"Orthanc stored {stored} of {len(files)}")
        return rate
    finally:
        orthanc.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--pdu", type=int, default=131072, help="max PDU of both pynetdicom receivers (0: no limit)")
    ap.add_argument("--no-orthanc", action="store_true", help="node and durable minimum only")
    ap.add_argument("--receivers", type=int, help="the node's [node] receiver_processes (default: the node's default)")
    args = ap.parse_args(argv)
    node_options = {} if args.receivers is None else {"receiver_processes": args.receivers}
    runs = [("node", n) for n in CONCURRENCY] + [("durable", n) for n in CONCURRENCY]
    runs += [] if args.no_orthanc else [("orthanc", 1)]
    rates: dict[tuple[str, int], list[float]] = {r: [] for r in runs}
    rss: list[float] = []
    cpu: dict[str, list[float]] = {"node": [], "durable": []}  # receiver CPU ms per instance
    with tempfile.TemporaryDirectory(prefix="hccnode-bench-") as tmp:
        tmp = Path(tmp)
        files = ct_series(tmp / "in", n=args.instances, size=args.size)
        mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"{len(files)} CT instances {args.size}x{args.size}, {mb:.0f} MB; storescu over loopback;"
              f" max PDU of both pynetdicom receivers {args.pdu or 'unlimited'}", flush=True)
        # Not counted: one send to each pynetdicom receiver first. The first measurement of a run
        # otherwise pays for cold caches (the input files, the modules), and it is always the
        # node's, first in round 1 (seen: 147 and 154 instances/s there, 178-207 in its later rounds).
        (tmp / "warm-node").mkdir()
        (tmp / "warm-durable").mkdir()
        warm = [f"nodex1 {run_node(tmp / 'warm-node', files, 1, args.pdu, [], node_options)[0]:.0f}",
                f"durablex1 {run_durable(tmp / 'warm-durable', files, 1, args.pdu, []):.0f}"]
        shutil.rmtree(tmp / "warm-node")
        shutil.rmtree(tmp / "warm-durable")
        print("warm-up, not counted (img/s): " + ", ".join(warm), flush=True)
        for r in range(args.rounds):
            # Alternate: node and durable minimum interleaved per concurrency, order rotated per round.
            order = [(who, n) for n in CONCURRENCY for who in ("node", "durable")] + runs[len(CONCURRENCY) * 2:]
            order = order[r % len(order):] + order[:r % len(order)]
            line = []
            for who, n in order:
                work = tmp / f"r{r}-{who}-{n}"
                work.mkdir()
                if who == "node":
                    rate, peak = run_node(work, files, n, args.pdu, cpu["node"], node_options)
                    rss.append(peak)
                elif who == "durable":
                    rate = run_durable(work, files, n, args.pdu, cpu["durable"])
                else:
                    rate = run_orthanc(work, files, n)
                rates[(who, n)].append(rate)
                line.append(f"{who}x{n} {rate:.0f}")
                shutil.rmtree(work)
            print(f"round {r + 1} (img/s): " + ", ".join(line), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"medians of {args.rounds} rounds (img/s): " + ", ".join(f"{w}x{n} {med[(w, n)]:.1f}" for w, n in runs))
    checks = [
        ("node / durable minimum, 1 association", med[("node", 1)] / med[("durable", 1)], 0.9),
        ("node / durable minimum, 4 associations", med[("node", 4)] / med[("durable", 4)], 1.0),
        ("node / durable minimum, 8 associations", med[("node", 8)] / med[("durable", 8)], 1.0),
    ]
    if not args.no_orthanc:
        checks.insert(1, ("node / Orthanc, 1 association", med[("node", 1)] / med[("orthanc", 1)], 4.0))
    for name, ratio, target in checks:
        print(f"{name}: {ratio:.2f} (target >= {target:.1f}) {'met' if ratio >= target else 'NOT MET'}")
    print("receiver CPU per instance, median over all runs (ms): "
          + ", ".join(f"{who} {statistics.median(v):.2f}" for who, v in cpu.items()))
    peak = max(rss)
    print(f"node peak RSS, its receiver processes together: {peak:.0f} MB (target < 300 MB)"
          f" {'met' if peak < 300 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
