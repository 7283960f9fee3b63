"""Ingest benchmark: the node against pynetdicom's bare storescp, in the same run.

Generates 300 CT instances of 512x512 (about 150 MB), sends them with dcmtk's storescu over
loopback to (a) the node (which fsyncs and indexes every instance before answering) and
(b) pynetdicom's storescp application (which writes files without fsync), alternating,
3 rounds each, each round into a fresh, empty data directory. Prints the median images/s of
both, the ratio node/bare (target >= 0.9) and the node's peak RSS (target < 300 MB).

    python bench/ingest.py [--instances 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from dicomgen import ct_series  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def send(port: int, files: list[Path]) -> float:
    t = time.perf_counter()
    subprocess.run(["storescu", "-aec", "ANY-SCP", "127.0.0.1", str(port), *map(str, files)], check=True,
                   capture_output=True)
    return len(files) / (time.perf_counter() - t)


def round_node(work: Path, files: list[Path]) -> tuple[float, float]:
    port = free_port()
    cfg = work / "hccnode.toml"
    cfg.write_text(f'[node]\nport = {port}\ndata_dir = "{work / "data"}"\n[study]\nstable_seconds = 600.0\n'
                   '[hl7]\nenabled = false\n[log]\nlevel = "WARNING"\n')
    proc = subprocess.Popen([sys.executable, "-m", "hccnode", "-c", str(cfg), "serve"], cwd=work)
    try:
        wait_port(port)
        rate = send(port, files)
        with sqlite3.connect(work / "data" / "hccnode.db") as db:
            indexed = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        if indexed != len(files):
            raise RuntimeError(f"node indexed {indexed} of {len(files)}")
        return rate, peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def round_bare(work: Path, files: list[Path]) -> float:
    port = free_port()
    out = work / "bare"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pynetdicom", "storescp", "-od", str(out), str(port)], cwd=work)
    try:
        wait_port(port)
        rate = send(port, files)
        if len(list(out.iterdir())) != len(files):
            raise RuntimeError("bare storescp did not store every instance")
        return rate
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hccnode-bench-") as tmp:
        tmp = Path(tmp)
        files = ct_series(tmp / "in", n=args.instances, size=512)
        mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"{len(files)} CT instances 512x512, {mb:.0f} MB")
        node, bare, rss = [], [], []
        for r in range(args.rounds):
            w = tmp / f"round{r}"
            (w / "node").mkdir(parents=True)
            (w / "bare").mkdir()
            rate, peak = round_node(w / "node", files)
            node.append(rate)
            rss.append(peak)
            bare.append(round_bare(w / "bare", files))
            print(f"round {r + 1}: node {node[-1]:.1f} img/s (peak RSS {peak:.0f} MB), bare storescp {bare[-1]:.1f} img/s")
            shutil.rmtree(w)
        n, b = statistics.median(node), statistics.median(bare)
        print(f"median: node {n:.1f} img/s, bare storescp {b:.1f} img/s, ratio {n / b:.2f} (target >= 0.90)")
        print(f"node peak RSS: {max(rss):.0f} MB (target < 300 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
