"""DICOM outputs of one analysis: SEG of the ROIs, ECV Parametric Map, TID 1500 SR, summary PDF.

Entry point (pure builders underneath, one module per object: seg, pmap, sr, summary):

    from hccnode.report import ReportRoi, build_outputs
    files = build_outputs(
        sources,        # pydicom datasets (headers suffice) of every instance of the measured series,
                        #   and the reader's annotation object if one was used (SR evidence)
        reference,      # datasets of the reference series in the masks' z order, or a
                        #   Reference (Reference.from_volume(volume, datasets) handles
                        #   enhanced multi-frame series and their frame order)
        rois,           # [ReportRoi(RoiRef, bool mask z,y,x)], e.g. ReportRoi.from_roi_mask(roi_mask)
        measurements,   # [hccnode.imaging.measure.Measurement], missing ones with their reason
        model_results,  # [dict from hccnode.models.engine.evaluate]
        labs_used,      # [hccnode.imaging.measure.LabRef]
        out_dir,
        ecv_map=None,      # float (z,y,x) ECV in %, NaN where not computed, on the reference grid (array or BoxedArray)
        liver_mask=None,   # bool mask the map is restricted to (default: union of the liver ROIs)
        images=None,       # reference volume (z,y,x, HU) for the summary's key images
        missing=(),        # extra "not measured" notes, e.g. "ECV not measured: no hematocrit within 48 h"
        previous_sr=None,  # the SR this analysis replaces (referenced as predecessor)
    )
    # -> [seg.dcm, ecv_map.dcm (if a map), sr.dcm, sr_results.dcm (if ROIs), summary.dcm];
    #    summary.pdf/.png beside them.

Which measurements enter the SR, with their codes and units, is read from sr_templates/
(`templates.load_template`). Measurements are matched to template entries by formula id; those
without an entry are listed in the SR's notes, not dropped silently. Output UIDs are derived
from the inputs (`uids`): the same analysis gives the same UIDs, a changed input new ones.
"""

import importlib

# Imported on first use: highdicom and matplotlib are heavy, and the CLI (hence the node process,
# which only hands analysis to worker processes) imports this package to register its commands.
_EXPORTS = {"Reference": "inputs", "ReportRoi": "inputs", "build_outputs": "outputs",
            "TemplateError": "templates", "load_template": "templates"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
