"""Small instances from a sender with Nagle's algorithm on: the node against the same sender with
Nagle off, in the same run (hccnode.net.tcp_options).

dcmtk's storescu as Debian builds it (3.6.7) leaves Nagle's algorithm on unless TCP_NODELAY=1 is
in its environment, and writes each PDU as a small header and then its body. A receiver that
delays its TCP acknowledgements holds each instance smaller than a segment back by up to 40 ms.
This bench sends --instances CT slices of --size² (default 200 of 64x64, about 10 kB each) over
one association with storescu as built and with TCP_NODELAY=1, in alternating rounds, to:
  - the node (`hccnode serve` on its defaults, started warm as bench/ingest.py starts it), which
    acknowledges at once (TCP_QUICKACK after each read);
  - the durable minimum (bench/durable_scp.py, a bare pynetdicom SCP that does not);
  - Orthanc (dcmtk's SCP), unless --no-orthanc.
And the other way, unless --no-orthanc: a pynetdicom sender (as the node's forwarder sends) to
Orthanc, with pynetdicom's sockets as they come and with hccnode.net.tcp_options installed, each
in a process of its own, alternating.
Prints every round, the medians, each receiver's rate with the Nagle sender divided by its rate
with the sender's Nagle off (1.0: the sender's Nagle costs nothing), and the pynetdicom sender's
rate with the node's TCP options divided by its rate without.

    python bench/small_instances.py [--instances 200] [--size 64] [--rounds 3] [--no-orthanc]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402

SENDERS = {"nagle": {}, "nodelay": {"TCP_NODELAY": "1"}}
PYNETDICOM = ("plain", "tcp_options")


def pynetdicom_send(port: int, files: list[str], options: bool) -> float:
    """Instances per second from one pynetdicom association (run in a process of its own)."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    if options:
        from hccnode.net import tcp_options
        tcp_options.install()
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE()
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port)
    if not assoc.is_established:
        raise RuntimeError("Orthanc refused the association")
    t = time.perf_counter()
    for ds in datasets:
        st = assoc.send_c_store(ds)
        if not st or st.Status != 0:
            raise RuntimeError(f"C-STORE failed: {st}")
    rate = len(datasets) / (time.perf_counter() - t)
    assoc.release()
    return rate


def run_pynetdicom(work: Path, files: list[Path], mode: str) -> float:
    orthanc = ingest.open_orthanc(work)
    try:
        out = subprocess.run([sys.executable, __file__, "--pynetdicom-to", str(orthanc.dicom_port), mode,
                              *map(str, files)], check=True, capture_output=True, text=True).stdout
        return float(out.split()[-1])
    finally:
        orthanc.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-orthanc", action="store_true")
    ap.add_argument("--pynetdicom-to", nargs="+", metavar=("PORT MODE", "FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pynetdicom_to:
        port, mode, *files = args.pynetdicom_to
        print(f"{pynetdicom_send(int(port), files, mode == 'tcp_options'):.3f}")
        return 0
    receivers = ["node", "durable"] + ([] if args.no_orthanc else ["orthanc"])
    rates: dict[tuple[str, str], list[float]] = {(r, s): [] for r in receivers for s in SENDERS}
    rates.update({("pynetdicom->orthanc", m): [] for m in ([] if args.no_orthanc else PYNETDICOM)})
    with tempfile.TemporaryDirectory(prefix="hccnode-bench-") as tmp:
        tmp = Path(tmp)
        files = ingest.ct_series(tmp / "in", n=args.instances, size=args.size)
        kb = sum(f.stat().st_size for f in files) / len(files) / 1e3
        print(f"{len(files)} CT instances {args.size}x{args.size} ({kb:.0f} kB each); one storescu association",
              flush=True)
        for r in range(args.rounds):
            order = list(rates)
            order = order[r % len(order):] + order[:r % len(order)]
            line = []
            for rcv, snd in order:
                work = tmp / f"r{r}-{rcv}-{snd}"
                work.mkdir()
                ingest.SENDER_ENV.clear()
                ingest.SENDER_ENV.update(SENDERS.get(snd, {}))
                if rcv == "node":
                    rate = ingest.run_node(work, files, 1, 131072, [], {})[0]
                elif rcv == "durable":
                    rate = ingest.run_durable(work, files, 1, 131072, [])
                elif rcv == "pynetdicom->orthanc":
                    rate = run_pynetdicom(work, files, snd)
                else:
                    rate = ingest.run_orthanc(work, files, 1)
                rates[(rcv, snd)].append(rate)
                line.append(f"{rcv}/{snd} {rate:.0f}")
                shutil.rmtree(work)
            print(f"round {r + 1} (img/s): " + ", ".join(line), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"medians of {args.rounds} rounds (img/s): " + ", ".join(f"{r}/{s} {v:.1f}" for (r, s), v in med.items()))
    for rcv in receivers:
        print(f"{rcv}: Nagle sender / sender without Nagle {med[(rcv, 'nagle')] / med[(rcv, 'nodelay')]:.2f}")
    if not args.no_orthanc:
        k = "pynetdicom->orthanc"
        print(f"{k}: with the node's TCP options / without {med[(k, 'tcp_options')] / med[(k, 'plain')]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
