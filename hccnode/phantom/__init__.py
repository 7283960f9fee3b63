"""Synthetic liver studies with known truth, written as real DICOM (no patient; research use only).

    from hccnode.phantom import StudySpec, generate
    truth = generate(StudySpec(kind="cect", vendor="siemens", seed=1, slices=16, matrix=96), out_dir)
    truth.roi("tumor")["ecv"]                       # true tumor ECV, by construction
    truth.roi("aorta")["phases"]["equilibrium"]     # noise-free HU, ΔHU, iodine mg/mL, VMI HU, λHU
    truth.series("dect_vmi", phase="arterial", kev=40.0)[0]["series_instance_uid"]

Kinds: "cect" (unenhanced, arterial 35 s, portal 70 s, equilibrium 180 s by default), "dect" (the
same plus, per enhanced phase, an iodine map in mg/mL, VMIs at 40 and 90 keV and a virtual
unenhanced image), "mr" (T2 TSE, DWI b 50/800, ADC in 10⁻⁶ mm²/s; baseline and follow-up).
Vendor styles (series descriptions, ImageType, rescale, private b-value tags) come from
hccnode/data/phantom_vendors.toml; "standard" uses the DICOM multi-energy CT attributes.

Files: out_dir/[send1|send2/]<baseline|followup>/<series number>_<key>/IM00001.dcm ... and
out_dir/truth.json (= Truth.as_dict()): patient (synthetic), hct, delays, units, the contrast
model, geometry, and per study its UIDs, series (kind, phase, keV, b-values, UID, number,
description, folder, SOP Instance UIDs, true and header delays, motion) and ROIs (true ECV,
noise-free values per phase, iodine, λHU, T2 ratio, ADC, tumor diameter / volume / centre, ROI
centres in patient coordinates). Same seed: identical bytes and UIDs.

Validation: every file passes dciodvfy without errors. Remaining warnings are the vendor styles'
own ImageType terms, Rescale Type MGML (unknown to dicom3tools 2022, standard since Sup 188) and
Diffusion b-value (0018,9087) in classic MR images (as scanners write it). Enhanced CT applies to
CT only, and iodine maps stay single-frame there (dicom3tools rejects non-HU rescale in Enhanced CT).

Modules: anatomy (shapes, labels, motion), enhancement (tissue and contrast model, units),
ct / mr (series plans), images (streaming single-frame writer), enhanced (multi-frame writer),
multienergy (DICOM multi-energy attributes), dicomio (UIDs, identity, files), vendors, seg
(reader's annotation, highdicom), commands (`hccnode phantom`).
"""

from hccnode.phantom.anatomy import Motion, Tumor
from hccnode.phantom.generate import Truth, generate
from hccnode.phantom.spec import SpecError, StudySpec

__all__ = ["Motion", "SpecError", "StudySpec", "Truth", "Tumor", "generate"]
