"""Analysis latency and memory on one 4-phase CECT study, from classification to the markers and
the ECV map (default 4 x 200 slices of 512 x 512, 1.5 mm: the size of paper 001's protocol).

    python bench/analysis.py [--slices 200] [--matrix 512] [--rounds 3] [--data DIR] [--profile FILE]

Setup, not timed: the phantom generator (hccnode.phantom) writes the study as DICOM (with motion
of the enhanced phases and a reader's SEG on the unenhanced phase) and the node's ingest indexes
it in a Store, both in a RAM-backed scratch directory. Each round then runs in a fresh process
(as a node job does) and times:

    classify     phase_index.classify_and_keep_headers (headers, sampled pixels, rules, index rows)
    load <phase> volumes.read_series of the four CT series (with the headers classification read)
    register <p> each enhanced phase registered to the unenhanced one (pipeline.align.Aligner,
                 as the pipeline does: in a background thread, started once the phase is loaded,
                 so "(wait)" is only the part the loading of the next phase did not cover)
    markers      the reader's SEG onto the unenhanced grid (the equilibrium phase's registration
                 ends meanwhile), the equilibrium phase resampled
                 within the ROIs' boxes (Aligner.limit_to), tumor and liver ECV (paper 001; ROI
                 cores as pipeline.findings reads them), tumor diameter and volume
    ecv map      ecv.ecv_map_boxed over the liver (as the pipeline: the values over its box)

Modules are imported before the clock starts (a node's worker process has them loaded). Wall
and CPU seconds (all threads) are printed per step: on a shared machine the CPU figure moves
less with the other load.
Peak RSS is ru_maxrss of the round's process plus the largest of its child processes.
Targets (issue 5): <= 10 s and <= 1.5 GB for 4 x 300 slices on the 2-core machine.
Not run by the tests; the figures depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PHASES = ("unenhanced", "arterial", "portal_venous", "equilibrium")
ENHANCED = PHASES[1:]
HCT = 0.40
# Motion of the enhanced phases against the unenhanced one (mm, deg about z); the equilibrium
# phase gets the acceptance case of issue 5 (5 mm shift, 3 deg rotation).
MOTION = {"arterial": ((2.0, -3.0, 1.5), 1.0), "portal": ((-3.0, 2.0, -2.0), -2.0), "equilibrium": ((3.0, 4.0, 0.0), 3.0)}


def setup(data: Path, slices: int, matrix: int) -> None:
    """Generate the study and index it (Store under data/node). Reused if already there."""
    from phantom_index import index_files

    from hccnode.phantom import Motion, StudySpec, generate
    from hccnode.store.db import Store

    spec = StudySpec(kind="cect", seed=11, slices=slices, matrix=matrix, slice_thickness_mm=1.5,
                     seg_phase="unenhanced",
                     motion={p: Motion(shift_mm=s, rotation_deg=r) for p, (s, r) in MOTION.items()})
    marker = data / "ready.json"
    if marker.exists() and json.loads(marker.read_text()) == json.loads(json.dumps(spec.as_dict())):
        return
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    truth = generate(spec, data / "phantom")
    store = Store(data / "node")
    (study,) = index_files(store, data / "phantom")
    store.close()
    (data / "study.json").write_text(json.dumps({"study_uid": study, "truth": truth.as_dict()}))
    marker.write_text(json.dumps(spec.as_dict()))


def analyse(data: Path) -> dict:
    """One timed pass over the indexed study; returns timings (s), results and peak RSS (MiB)."""
    import numpy as np
    import pydicom
    import SimpleITK as sitk

    from hccnode.imaging import ecv, phase_index, rois, size
    from hccnode.imaging.roi_stats import bounding_box
    from hccnode.imaging.volumes import read_series
    from hccnode.pipeline.align import Aligner
    from hccnode.pipeline.findings import mean_in
    from hccnode.pipeline.regions import Regions
    from hccnode.store.db import Store

    meta = json.loads((data / "study.json").read_text())
    truth = meta["truth"]
    import highdicom  # noqa: F401 - imported before the clock starts, as in a running node's worker
    from scipy import ndimage  # noqa: F401

    store = Store(data / "node")
    t: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds of all threads: less sensitive to other load than wall time

    def timed(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        t[name] = time.perf_counter() - t0
        cpu[name] = time.process_time() - c0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  {name} {t[name]:.2f} s (peak RSS so far {rss:.0f} MiB)", file=sys.stderr, flush=True)
        return out

    start, cpu_start = time.perf_counter(), time.process_time()
    decisions, read = timed("classify", lambda: phase_index.classify_and_keep_headers(store, meta["study_uid"]))
    by_phase = {d.phase: d.series_uid for d in decisions if d.kind.startswith("ct_")}
    missing = [p for p in PHASES if p not in by_phase]
    if missing:
        raise SystemExit(f"classification did not find phases {missing}: {[(d.kind, d.phase) for d in decisions]}")

    def paths(series_uid):
        rows = store.query("SELECT path FROM instances WHERE series_uid = ?", (series_uid,))
        return [store.data_dir / r["path"] for r in rows]

    def load(series_uid):  # with the headers classification read, as the pipeline's Study does
        return read_series([p for p, _ in read[series_uid]], [ds for _, ds in read[series_uid]])

    un = timed("load unenhanced", lambda: load(by_phase["unenhanced"]))
    aligner = Aligner(un)  # the pipeline's: registration cached per phase, resampling within the ROIs' boxes
    # As in the pipeline, each phase is registered in a background thread (Aligner.register_ahead)
    # while this one goes on: loading the next phase, and for the last one reading the SEG. The ECV
    # needs the equilibrium phase on the unenhanced grid; the other phases carry ROIs by their
    # transform, so only that image is kept.
    quality, waiting = {}, None
    for phase in ENHANCED:
        vol = timed(f"load {phase}", lambda: load(by_phase[phase]))
        aligner.register_ahead(vol)
        if waiting is not None:
            quality[waiting[0]] = timed(f"register {waiting[0]} (wait)", lambda: aligner.transform(waiting[1]))[1]
        waiting = (phase, vol)
        del vol
    eq_vol = waiting[1]

    def markers():
        seg_series = truth["studies"][0]["series"]
        seg_uid = next(s["series_instance_uid"] for s in seg_series if s["kind"] == "seg")
        found = rois.read_annotation(pydicom.dcmread(paths(seg_uid)[0]), un)
        quality["equilibrium"] = aligner.transform(eq_vol)[1]  # registered meanwhile
        # CECT needs tumor, liver and aorta, as the pipeline's Regions gives them (bool views of
        # the ROIs' images).
        regions = Regions(rois=[r for r in found.rois if r.role in ("tumor", "liver", "aorta")])
        del found
        needed = {r.role: regions.array(r) for r in regions.rois}
        boxes = {role: bounding_box(m, 1) for role, m in needed.items()}
        # Values are read within each ROI's box (the whole liver mask too, for the map).
        part = {role: needed[role][boxes[role]] for role in needed}
        liver = needed["liver"]
        aligner.limit_to(list(boxes.values()))
        eq = aligner.through(eq_vol)  # resampled within the ROIs' boxes
        eq_vol.image = None  # only its values within the boxes are needed from here on
        u, e = sitk.GetArrayViewFromImage(un.image), eq.array()

        def mean(img, role):
            return mean_in(img[boxes[role]], part[role])

        aorta = (mean(u, "aorta"), mean(e, "aorta"))
        out = {role: ecv.cect_ecv(mean(u, role), mean(e, role), *aorta, hct=HCT).ecv_percent
               for role in ("tumor", "liver")}
        spacing = un.image.GetSpacing()[::-1]
        out["diameter_mm"] = size.max_inplane_diameter_mm(part["tumor"], spacing)[0]
        out["volume_ml"] = size.volume_ml(part["tumor"], spacing)
        out["delta_hu_aorta"] = aorta[1] - aorta[0]
        return out, liver, eq

    values, liver, eq = timed("markers", markers)
    emap = timed("ecv map", lambda: ecv.ecv_map_boxed(sitk.GetArrayViewFromImage(un.image), eq.array(), liver,
                                                        values["delta_hu_aorta"], HCT, un.image.GetSpacing()[::-1]))
    t["total"] = time.perf_counter() - start
    cpu["total"] = time.process_time() - cpu_start
    values["map_mean"] = float(np.nanmean(emap[bounding_box(liver)]))
    rois_truth = truth["studies"][0]["rois"]
    values["truth"] = {"tumor": 100 * rois_truth["tumor"]["ecv"], "liver": 100 * rois_truth["liver"]["ecv"],
                       "diameter_mm": rois_truth["tumor"]["diameter_mm"], "volume_ml": rois_truth["tumor"]["volume_ml"]}
    values["registration"] = quality
    store.close()
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"times": t, "cpu": cpu, "values": values, "peak_rss_mib": rss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", type=Path, help="keep the generated study here and reuse it (default: a temporary "
                                              "directory in /dev/shm, removed afterwards)")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the first round to this file")
    ap.add_argument("--_round", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_setup", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._setup:
        setup(args._setup, args.slices, args.matrix)
        return 0
    if args._round:
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
            result = prof.runcall(analyse, args._round)
            prof.dump_stats(args.profile)
        else:
            result = analyse(args._round)
        print(json.dumps(result))
        return 0

    scratch = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    tmp = None if args.data else tempfile.mkdtemp(prefix="hccnode-bench-", dir=scratch)
    data = args.data or Path(tmp)
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--slices", str(args.slices), "--matrix", str(args.matrix),
                        "--_setup", str(data)], check=True)
        print(f"setup (phantom DICOM + ingest, not timed): {time.perf_counter() - t0:.0f} s, "
              f"4 x {args.slices} slices of {args.matrix}^2")
        results = []
        for i in range(args.rounds):
            cmd = [sys.executable, __file__, "--_round", str(data)]
            if args.profile and i == 0:
                cmd += ["--profile", str(args.profile)]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"round {i + 1}: total {r['times']['total']:.2f} s (CPU {r['cpu']['total']:.2f} s), "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB, load average {os.getloadavg()[0]:.1f}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    names = list(results[0]["times"])
    print(f"\nwall time (s) per round, then the median, and median CPU seconds (all threads)")
    print(f"{'step':30s} " + " ".join(f"{'r' + str(i + 1):>7s}" for i in range(len(results))) + "   median      cpu")
    for name in names:
        row = [r["times"][name] for r in results]
        cpu = statistics.median(r["cpu"][name] for r in results)
        print(f"{name:30s} " + " ".join(f"{v:7.2f}" for v in row) + f"  {statistics.median(row):7.2f}  {cpu:7.2f}")
    rss = [r["peak_rss_mib"] for r in results]
    print(f"{'peak RSS':30s} " + " ".join(f"{v:7.0f}" for v in rss) + f"  {statistics.median(rss):7.0f} MiB")
    v = results[-1]["values"]
    tr = v["truth"]
    print(f"\nECV tumor {v['tumor']:.2f} % (truth {tr['tumor']:.2f}), liver {v['liver']:.2f} % (truth {tr['liver']:.2f}), "
          f"map mean {v['map_mean']:.2f} %; tumor diameter {v['diameter_mm']:.1f} mm (truth {tr['diameter_mm']:.1f}), "
          f"volume {v['volume_ml']:.1f} mL (truth {tr['volume_ml']:.1f})")
    for phase, q in v["registration"].items():
        print(f"  {phase:14s} ok={q['ok']} stage={q['stage']} ncc {q['ncc_before']:.3f}->{q['ncc_after']:.3f} "
              f"rot {q['rotation_deg']:.2f} deg shift {q['translation_mm']:.2f} mm")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work on the machine slows the figures)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
