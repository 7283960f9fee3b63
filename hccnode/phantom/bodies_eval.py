"""Automatic CT ROI placement judged against the truth of generated bodies (issue 15, point 2).

`evaluate(body)` runs hccnode.imaging.auto_rois.ct_roi_masks on the body's equilibrium phase
(LPS array, the tumours as `avoid`, and the unenhanced phase as `unenhanced=` when the placer
takes it) and checks every ROI against the truth label map:

* a liver ROI is *outside the liver* when any voxel lies outside the organ (parenchyma,
  its vessels and tumours); it is *clean* when every voxel is parenchyma at least
  `CLEARANCE_MM` from anything else (edge, vessel, lesion, gallbladder), 3-D distance;
* liver ECV by paper 001 (hccnode.imaging.ecv.cect_ecv: the liver ROIs' mean HU averaged per
  phase, the aorta ROI's mean HU, the body's hematocrit) against the truth, in percentage points;
* the aorta ROI: inside the true lumen, and its dHU (equilibrium - unenhanced) against the truth;
* the noise floor of that ECV: the SD the image noise alone gives the estimate with these ROIs
  (`ecv_floor_sd_pp`, formula in bench/anatomy.py and `ecv_floor_sd`), from the noise measured on
  the image (`measured_noise`), and, with `noise_free=True`, the ECV the same ROIs give on the
  body rendered without noise (what is left there is not noise: placement, partial volume);
* with `fresh_noise=K`, the ECV the same ROIs give on the noise-free body plus K new draws of its
  noise (`bodies.fresh_noise`): the placement chose its spots on the first draw, so if that choice
  favoured some noise (a selection bias), the errors on the image it saw differ from those on
  noise it never saw.

`summarise(results)` gives the rates the bench prints against the issue's targets (>= 98 %
placed, 0 ROIs outside the liver, |liver ECV error| <= 1.0 pp in >= 95 %).
"""

from __future__ import annotations

import inspect
import time

import numpy as np
from scipy import ndimage

from hccnode.imaging.ecv import cect_ecv
from hccnode.phantom.bodies import GROUPS, L, Body, fresh_noise as draw_noise

CLEARANCE_MM = 5.0
ECV_TOLERANCE_PP = 1.0
TARGET_PLACED = 0.98
TARGET_ECV_SHARE = 0.95


VESSELS_FROM = "portal"   # the phase given as `vessels` (the pipeline gives the portal venous phase)


def _placer():
    from hccnode.imaging.auto_rois import ct_roi_masks
    return ct_roi_masks


def place(body: Body, placer=None):
    """(placed masks, notes) of the automatic CT placement on the body's equilibrium phase, with
    its unenhanced phase and its VESSELS_FROM phase (the veins, as the pipeline passes the portal
    venous phase) when the placer takes them."""
    placer = placer or _placer()
    avoid = body.mask("tumours")
    kwargs = {}
    if "unenhanced" in inspect.signature(placer).parameters:
        kwargs["unenhanced"] = body.hu["unenhanced"]
    if "vessels" in inspect.signature(placer).parameters:
        kwargs["vessels"] = body.hu[VESSELS_FROM]
    return placer(body.hu["equilibrium"], body.spacing, avoid=avoid, **kwargs)


def roi_check(body: Body, mask: np.ndarray) -> dict:
    """Where one liver ROI lies: the labels it covers, whether it is inside the organ, and its
    smallest 3-D distance (mm) to anything that is not parenchyma."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return {"voxels": 0, "inside_organ": False, "in_parenchyma": False, "clearance_mm": 0.0, "labels": []}
    labs = body.labels[mask]
    hit = sorted({L(int(v)).name.lower() for v in np.unique(labs)})
    inside_organ = bool(np.isin(labs, [int(v) for v in GROUPS["liver"]]).all())
    in_par = bool((labs == L.LIVER).all())
    pad = [int(np.ceil(CLEARANCE_MM / s)) + 1 for s in body.spacing]
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, body.labels.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    par = body.labels[box] == L.LIVER
    if par.all():
        clearance = float(min(p * s for p, s in zip(pad, body.spacing)))
    else:
        dist = ndimage.distance_transform_edt(par, sampling=body.spacing)
        clearance = float(dist[mask[box]].min())
    return {"voxels": int(len(idx)), "inside_organ": inside_organ, "in_parenchyma": in_par,
            "clearance_mm": round(clearance, 2), "labels": hit}


# Noise is measured on the difference of the registered phases (equilibrium - unenhanced), where
# the parenchyma's texture cancels, over liver parenchyma at least this far (mm) from anything
# else, in square blocks of this side (pixels) for its correlation.
NOISE_REGION_MM = 6.0
NOISE_BLOCK_PX = 8


def measured_noise(body: Body) -> tuple[float, float]:
    """(sigma HU, correlation cell in voxels) of the image noise, measured on the body's images.

    sigma^2 = var(d) / 2 with d = equilibrium - unenhanced over deep parenchyma (each phase
    carries its own independent noise; texture and ECV are common, so d is flat but for noise);
    the cell c = b^2 var(mean of b x b blocks of d) / var(d), so that a mean over N voxels has the
    variance sigma^2 c / N (noise is correlated in-plane by the point spread and the grain of
    iterative reconstruction, independent between slices)."""
    d = body.hu["equilibrium"].astype(np.float64) - body.hu["unenhanced"]
    deep = ndimage.distance_transform_edt(body.labels == L.LIVER, sampling=body.spacing) >= NOISE_REGION_MM
    if deep.sum() < 100:
        return float("nan"), float("nan")
    var = float(np.var(d[deep]))
    b = NOISE_BLOCK_PX
    means = []
    for k in np.nonzero(deep.any(axis=(1, 2)))[0]:
        full = ndimage.uniform_filter(deep[k].astype(float), b) > 0.999
        avg = ndimage.uniform_filter(d[k], b)
        means.append(avg[b // 2::b, b // 2::b][full[b // 2::b, b // 2::b]])
    means = np.concatenate(means) if means else np.array([])
    cell = b * b * float(np.var(means)) / var if means.size >= 20 else 1.0
    return float(np.sqrt(var / 2.0)), max(cell, 1.0)


def ecv_floor_sd(ecv_pct: float, d_liver: float, d_aorta: float, liver_voxels: list[int], aorta_voxels: int,
                 sigma: float, cell: float) -> float:
    """SD (pp) of paper 001's ECV = (1 - HCT) dHU_liver / dHU_aorta from image noise alone,
    first-order propagation: the liver dHU is the mean over n ROIs of (equilibrium - unenhanced)
    ROI means, var = 2 sigma^2 c / n^2 sum(1 / N_i); the aortic dHU's var = 2 sigma^2 c / N_a;
    SD(ECV) = ECV sqrt(var_L / dHU_liver^2 + var_A / dHU_aorta^2)."""
    n = len(liver_voxels)
    var_l = 2.0 * sigma ** 2 * cell * sum(1.0 / v for v in liver_voxels) / (n * n)
    var_a = 2.0 * sigma ** 2 * cell / aorta_voxels
    return abs(ecv_pct) * float(np.sqrt(var_l / d_liver ** 2 + var_a / d_aorta ** 2))


def describe(body: Body) -> str:
    """What the body has, in a few words (for failure lines)."""
    f = body.features
    words = [w for w in ("cirrhotic", "fatty", "lean", "ascites", "splenomegaly", "riedel", "fat_planes",
                         "calcified_aorta", "metal", "oral_contrast") if f.get(w)]
    touch = [k for k, v in f.get("liver_touches", {}).items() if v and k in ("kidney", "stomach", "bowel", "spleen")]
    if touch:
        words.append("touching " + "/".join(touch))
    words.append(f"liver {body.liver_volume_ml:.0f} mL ({f['liver_in_scan_ml']:.0f} in scan)")
    words.append(f"{f['n_tumours']} tumours")
    words.append(f"{f['matrix']}px {f['pixel_mm']:.2f}mm x {f['slices']} x {f['slice_mm']:.2f}mm, "
                 f"noise {f['noise_sd']:.0f} HU{', feet-first' if body.feet_first else ''}")
    return ", ".join(words)


def evaluate(body: Body, placer=None, noise_free: bool = False, fresh_noise: int = 0) -> dict:
    """One body through the automatic placement; the checks described in the module docstring.
    `noise_free`: also render the body without noise (same seed, same anatomy and contrast) and
    measure the ECV with the same ROIs on it. `fresh_noise`: that many new noise draws on it, the
    ECV errors with the same ROIs on each (`ecv_fresh_noise_errors_pp`)."""
    t0 = time.perf_counter()
    out: dict = {"seed": body.seed, "body": describe(body), "features": _plain(body.features),
                 "truth_ecv_pct": round(body.liver_ecv_percent, 3), "error": None}
    try:
        placed, notes = place(body, placer)
    except Exception as exc:  # the bench records a crash of the placer as a failed case
        placed, notes = [], []
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["seconds_place"] = round(time.perf_counter() - t0, 2)
    out["notes"] = list(notes)
    un, eq = body.hu["unenhanced"], body.hu["equilibrium"]
    livers = [p for p in placed if p.role == "liver" and np.asarray(p.mask).any()]
    aortas = [p for p in placed if p.role == "aorta" and np.asarray(p.mask).any()]
    out["placed"] = [p.label for p in placed]
    out["liver_rois"] = []
    for p in livers:
        m = np.asarray(p.mask, bool)
        chk = roi_check(body, m)
        chk.update(label=p.label, un_hu=float(un[m].mean()), eq_hu=float(eq[m].mean()))
        chk["clean"] = chk["in_parenchyma"] and chk["clearance_mm"] >= CLEARANCE_MM
        out["liver_rois"].append(chk)
    out["liver_found"] = len(livers) >= 1
    out["liver_all_three"] = len({p.label for p in livers}) >= 3
    out["rois_outside"] = sum(not r["inside_organ"] for r in out["liver_rois"])
    out["rois_not_clean"] = sum(not r["clean"] for r in out["liver_rois"])
    out["aorta_found"] = bool(aortas)
    out["aorta_inside"] = None
    out["aorta_delta_error_hu"] = None
    out["ecv_pct"] = None
    out["ecv_error_pp"] = None
    if aortas:
        am = np.asarray(aortas[0].mask, bool)
        out["aorta_inside"] = bool((body.labels[am] == L.AORTA).all())
        a_un, a_eq = float(un[am].mean()), float(eq[am].mean())
        true_delta = body.aorta_hu["equilibrium"] - body.aorta_hu["unenhanced"]
        out["aorta_delta_error_hu"] = round((a_eq - a_un) - true_delta, 2)
        if livers:
            r = cect_ecv([c["un_hu"] for c in out["liver_rois"]], [c["eq_hu"] for c in out["liver_rois"]],
                         a_un, a_eq, body.hct)
            if r.ecv_percent is not None:
                out["ecv_pct"] = round(r.ecv_percent, 3)
                out["ecv_error_pp"] = round(r.ecv_percent - body.liver_ecv_percent, 3)
                sigma, cell = measured_noise(body)
                out["noise_measured_hu"] = round(sigma, 2)
                out["noise_cell_voxels"] = round(cell, 2)
                out["ecv_floor_sd_pp"] = round(ecv_floor_sd(
                    r.ecv_percent, r.delta_hu_tissue, r.delta_hu_aorta, [c["voxels"] for c in out["liver_rois"]],
                    int(am.sum()), sigma, cell), 3)
                if noise_free or fresh_noise:
                    clean = _clean(body)
                    truth = body.liver_ecv_percent
                    if noise_free:
                        out["ecv_noise_free_error_pp"] = round(_ecv_on(clean.hu, livers, am, clean.hct) - truth, 3)
                    if fresh_noise:
                        rng = np.random.default_rng([body.seed, 7919])
                        out["ecv_fresh_noise_errors_pp"] = [
                            round(_ecv_on({p: clean.hu[p] + draw_noise(body, rng) for p in ("unenhanced", "equilibrium")},
                                          livers, am, clean.hct) - truth, 3) for _ in range(fresh_noise)]
    out["ok"] = (out["liver_found"] and out["rois_outside"] == 0 and out["ecv_error_pp"] is not None
                 and abs(out["ecv_error_pp"]) <= ECV_TOLERANCE_PP)
    return out


def _clean(body: Body) -> Body:
    """The same body rendered without noise (same seed, anatomy and contrast)."""
    from hccnode.phantom.bodies import generate_body

    return generate_body(body.seed, **{**body.overrides, "noise_sd": 0.0, "feet_first": body.feet_first})


def _ecv_on(hu: dict, livers, aorta_mask: np.ndarray, hct: float) -> float:
    """Paper 001's liver ECV with the placed ROIs on the phases `hu`."""
    un, eq = hu["unenhanced"], hu["equilibrium"]
    ms = [np.asarray(p.mask, bool) for p in livers]
    r = cect_ecv([float(un[m].mean()) for m in ms], [float(eq[m].mean()) for m in ms],
                 float(un[aorta_mask].mean()), float(eq[aorta_mask].mean()), hct)
    return float("nan") if r.ecv_percent is None else r.ecv_percent


def _plain(d):
    if isinstance(d, dict):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    if isinstance(d, (np.floating, np.integer, np.bool_)):
        return d.item()
    return d


def summarise(results: list[dict]) -> dict:
    """Rates over evaluated bodies (see the module docstring)."""
    n = len(results)
    errs = np.array([abs(r["ecv_error_pp"]) for r in results if r["ecv_error_pp"] is not None])
    signed = np.array([r["ecv_error_pp"] for r in results if r["ecv_error_pp"] is not None])
    aerr = np.array([abs(r["aorta_delta_error_hu"]) for r in results if r["aorta_delta_error_hu"] is not None])
    n_rois = sum(len(r["liver_rois"]) for r in results)
    within = int((errs <= ECV_TOLERANCE_PP).sum()) if len(errs) else 0
    return {
        "bodies": n,
        "liver_found": sum(r["liver_found"] for r in results),
        "liver_all_three": sum(r["liver_all_three"] for r in results),
        "liver_rois": n_rois,
        "rois_outside_liver": sum(r["rois_outside"] for r in results),
        "rois_not_clean": sum(r["rois_not_clean"] for r in results),
        "ecv_measured": int(len(errs)),
        "ecv_within_tolerance": within,
        "ecv_abs_error_median_pp": float(np.median(errs)) if len(errs) else None,
        "ecv_abs_error_p95_pp": float(np.percentile(errs, 95)) if len(errs) else None,
        "ecv_error_median_pp": float(np.median(signed)) if len(signed) else None,
        "aorta_found": sum(r["aorta_found"] for r in results),
        "aorta_inside": sum(bool(r["aorta_inside"]) for r in results),
        "aorta_abs_delta_error_median_hu": float(np.median(aerr)) if len(aerr) else None,
        "aorta_abs_delta_error_p95_hu": float(np.percentile(aerr, 95)) if len(aerr) else None,
        **_floor_summary(results),
        "errors": sum(r["error"] is not None for r in results),
        "targets_met": bool(n and sum(r["liver_found"] for r in results) >= TARGET_PLACED * n
                            and sum(r["rois_outside"] for r in results) == 0
                            and within >= TARGET_ECV_SHARE * n),
    }


# Noise bands (HU, the generator's stated noise SD) for the error split.
NOISE_BANDS = ((8.0, 14.0), (14.0, 20.0), (20.0, 26.0), (26.0, 31.0))


def _floor_summary(results: list[dict]) -> dict:
    """ECV error against its noise floor: within max(1 pp, 2 floor SD), |error| / floor SD, the
    noise-free error, and the split by noise band."""
    rs = [r for r in results if r["ecv_error_pp"] is not None and r.get("ecv_floor_sd_pp") is not None]
    out: dict = {"ecv_with_floor": len(rs)}
    if not rs:
        return out
    err = np.array([abs(r["ecv_error_pp"]) for r in rs])
    floor = np.array([r["ecv_floor_sd_pp"] for r in rs])
    out["ecv_within_floor"] = int((err <= np.maximum(ECV_TOLERANCE_PP, 2.0 * floor)).sum())
    out["ecv_floor_sd_median_pp"] = float(np.median(floor))
    out["ecv_floor_sd_above_half_pp"] = int((floor > ECV_TOLERANCE_PP / 2.0).sum())
    out["ecv_z_median"] = float(np.median(err / floor))
    out["ecv_z_p95"] = float(np.percentile(err / floor, 95))
    nf = np.array([abs(r["ecv_noise_free_error_pp"]) for r in rs if r.get("ecv_noise_free_error_pp") is not None])
    nf = nf[np.isfinite(nf)]
    if nf.size:
        out["ecv_noise_free"] = int(nf.size)
        out["ecv_noise_free_within"] = int((nf <= ECV_TOLERANCE_PP).sum())
        out["ecv_noise_free_abs_median_pp"] = float(np.median(nf))
        out["ecv_noise_free_abs_p95_pp"] = float(np.percentile(nf, 95))
    fresh = [(r["ecv_error_pp"], r["ecv_fresh_noise_errors_pp"], r["ecv_floor_sd_pp"]) for r in rs
             if r.get("ecv_fresh_noise_errors_pp")]
    if fresh:
        seen = np.array([e / f for e, _, f in fresh])
        new = np.array([e / f for _, es, f in fresh for e in es if np.isfinite(e)])
        out["ecv_fresh_noise"] = {"bodies": len(fresh), "draws": int(new.size),
                                  "z_seen_mean": float(seen.mean()), "z_seen_sd": float(seen.std()),
                                  "z_new_mean": float(new.mean()), "z_new_sd": float(new.std())}
    bands = []
    for lo, hi in NOISE_BANDS:
        sel = np.array([lo <= r["features"].get("noise_sd", 0.0) < hi for r in rs])
        if sel.any():
            bands.append({"noise_hu": (lo, hi), "n": int(sel.sum()), "abs_error_median_pp": float(np.median(err[sel])),
                          "within_1pp": int((err[sel] <= ECV_TOLERANCE_PP).sum()),
                          "within_floor": int((err[sel] <= np.maximum(ECV_TOLERANCE_PP, 2.0 * floor[sel])).sum()),
                          "floor_sd_median_pp": float(np.median(floor[sel]))})
    out["ecv_bands"] = bands
    return out


def report_lines(results: list[dict]) -> list[str]:
    """Human-readable summary against the targets, then one line per failed case."""
    s = summarise(results)
    n = max(s["bodies"], 1)

    def pct(k):
        return f"{s[k]}/{s['bodies']} ({100.0 * s[k] / n:.1f} %)"

    def num(v, unit):
        return "n/a" if v is None else f"{v:.2f} {unit}"

    lines = [
        f"bodies: {s['bodies']}",
        f"liver found (>= 1 liver ROI): {pct('liver_found')}   target >= {100 * TARGET_PLACED:.0f} %",
        f"all three liver ROIs: {pct('liver_all_three')}",
        f"liver ROIs outside the liver: {s['rois_outside_liver']} of {s['liver_rois']}   target 0",
        f"liver ROIs not wholly in parenchyma >= {CLEARANCE_MM:g} mm from edge/vessels/lesions: "
        f"{s['rois_not_clean']} of {s['liver_rois']}",
        f"liver ECV measured: {s['ecv_measured']}/{s['bodies']}; |error| median "
        f"{num(s['ecv_abs_error_median_pp'], 'pp')}, 95th percentile {num(s['ecv_abs_error_p95_pp'], 'pp')}, "
        f"signed median {num(s['ecv_error_median_pp'], 'pp')}",
        f"|liver ECV error| <= {ECV_TOLERANCE_PP:g} pp: {pct('ecv_within_tolerance')}   target >= "
        f"{100 * TARGET_ECV_SHARE:.0f} %",
        *_floor_lines(s),
        f"aorta found: {pct('aorta_found')}; inside the true lumen: {pct('aorta_inside')}; |dHU error| median "
        f"{num(s['aorta_abs_delta_error_median_hu'], 'HU')}, 95th percentile {num(s['aorta_abs_delta_error_p95_hu'], 'HU')}",
        f"placer errors: {s['errors']}",
        f"targets met: {'yes' if s['targets_met'] else 'no'}",
    ]
    fails = [r for r in results if not r["ok"]]
    if fails:
        lines.append(f"failures ({len(fails)}):")
    for r in fails:
        what = []
        if r["error"]:
            what.append(f"error {r['error']}")
        if not r["liver_found"]:
            what.append("no liver ROI")
        for c in r["liver_rois"]:
            if not c["clean"]:
                what.append(f"{c['label']} in {'+'.join(c['labels'])} (clearance {c['clearance_mm']:.1f} mm)")
        if r["ecv_error_pp"] is not None:
            what.append(f"ECV {r['ecv_pct']:.1f} % vs true {r['truth_ecv_pct']:.1f} % ({r['ecv_error_pp']:+.1f} pp"
                        + (f", noise floor SD {r['ecv_floor_sd_pp']:.1f} pp" if r.get("ecv_floor_sd_pp") is not None else "")
                        + (f", without noise {r['ecv_noise_free_error_pp']:+.1f} pp"
                           if r.get("ecv_noise_free_error_pp") is not None else "") + ")")
        if not r["aorta_found"]:
            what.append("no aorta ROI")
        elif not r["aorta_inside"]:
            what.append("aorta ROI leaves the lumen")
        lines.append(f"  seed {r['seed']}: [{r['body']}] placed {r['placed'] or 'nothing'}; {'; '.join(what)}"
                     f"; notes: {' | '.join(r['notes']) or '-'}")
    return lines


def _floor_lines(s: dict) -> list[str]:
    if not s.get("ecv_with_floor"):
        return []
    n = s["ecv_with_floor"]
    lines = [
        f"ECV noise floor (SD the image noise alone gives, per body): median {s['ecv_floor_sd_median_pp']:.2f} pp; "
        f"above {ECV_TOLERANCE_PP / 2:g} pp (so that 95 % within {ECV_TOLERANCE_PP:g} pp is out of reach) in "
        f"{s['ecv_floor_sd_above_half_pp']}/{n}",
        f"|liver ECV error| <= max({ECV_TOLERANCE_PP:g} pp, 2 x floor SD): {s['ecv_within_floor']}/{n} "
        f"({100.0 * s['ecv_within_floor'] / n:.1f} %); |error| / floor SD median {s['ecv_z_median']:.2f}, "
        f"95th percentile {s['ecv_z_p95']:.2f} (noise alone: 0.67 and 1.96)",
    ]
    if s.get("ecv_noise_free"):
        m = s["ecv_noise_free"]
        lines.append(f"same ROIs on the body rendered without noise: |ECV error| median "
                     f"{s['ecv_noise_free_abs_median_pp']:.2f} pp, 95th percentile {s['ecv_noise_free_abs_p95_pp']:.2f} pp, "
                     f"<= {ECV_TOLERANCE_PP:g} pp in {s['ecv_noise_free_within']}/{m} ({100.0 * s['ecv_noise_free_within'] / m:.1f} %)")
    if s.get("ecv_fresh_noise"):
        f = s["ecv_fresh_noise"]
        lines.append(f"same ROIs on fresh noise ({f['draws']} draws on {f['bodies']} bodies): error / floor SD mean "
                     f"{f['z_new_mean']:+.3f}, SD {f['z_new_sd']:.3f}; on the image the placement saw: mean "
                     f"{f['z_seen_mean']:+.3f}, SD {f['z_seen_sd']:.3f}")
    for b in s["ecv_bands"]:
        lo, hi = b["noise_hu"]
        lines.append(f"  noise {lo:g}-{hi:g} HU: {b['n']} bodies, |error| median {b['abs_error_median_pp']:.2f} pp, "
                     f"floor SD median {b['floor_sd_median_pp']:.2f} pp, <= {ECV_TOLERANCE_PP:g} pp {b['within_1pp']}, "
                     f"<= max({ECV_TOLERANCE_PP:g}, 2 floor) {b['within_floor']}")
    return lines
