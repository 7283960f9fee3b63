"""`hccnode viewer`: see the node's results in OHIF (thin shell over install, stack and check)."""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from hccnode.viewer import check, install, stack


def register(sub) -> None:
    p = sub.add_parser("viewer", help="the node's results in OHIF over Orthanc's DICOMweb (make viewer)",
                       description="Orthanc (DICOMweb, OHIF at /ohif) and a node forwarding to it, on loopback. "
                                   "'install' fetches the pinned OHIF; 'serve' sends a phantom CECT study and "
                                   "prints its OHIF URL until Ctrl-C; 'check' opens it in headless Chromium and "
                                   "writes OUT/result.json and screenshots (exit 0 only if everything displayed).")
    p.add_argument("action", choices=("install", "serve", "check"),
                   help="install: fetch OHIF; serve: run the stack until Ctrl-C; check: headless check, then stop")
    p.add_argument("--dir", default=".viewer", help="where OHIF is installed (default: .viewer)")
    p.add_argument("--port", type=int, default=0, help="Orthanc's HTTP port for 'serve' (default: a free one)")
    p.add_argument("--out", default="viewer-check", help="result folder for 'check' (default: viewer-check)")
    p.set_defaults(func=run)


def _interrupt(signum, frame):
    """Ctrl-C or SIGTERM: Orthanc and the node are stopped on the way out (also when SIGINT
    was ignored by the parent, as for a background job)."""
    raise KeyboardInterrupt


def run(args) -> int:
    root = Path(args.dir)
    try:
        dist = install.install(root)
    except install.InstallError as exc:
        print(f"hccnode viewer: {exc}", file=sys.stderr)
        return 1
    if args.action == "install":
        print(f"OHIF {install.OHIF_VERSION} ready in {dist}")
        return 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="hccnode-viewer-"))
    try:
        with stack.Stack(work, dist, http_port=args.port) as s:
            print(f"Orthanc {s.base_url} (DICOMweb /dicom-web/, OHIF /ohif/); node on port {s.node_port}; "
                  f"sending a phantom CECT study ...", flush=True)
            study = s.send_phantom()
            print(f"results in Orthanc: {', '.join(sorted(study.results))}\n\n  {s.study_url(study.study_uid)}\n",
                  flush=True)
            if args.action == "check":
                result = check.run(s, study, Path(args.out))
                print("\n".join(check.summary(result)))
                print(f"details: {Path(args.out) / 'result.json'}")
                return 0 if result["passed"] else 1
            print("Ctrl-C stops Orthanc and the node.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0 if args.action == "serve" else 1
    except (stack.StackError, check.CheckError) as exc:
        print(f"hccnode viewer: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
