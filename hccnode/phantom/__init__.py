"""Synthetic liver studies with known truth, written as real DICOM.

    from hccnode.phantom import StudySpec, generate
    truth = generate(StudySpec(kind="cect", vendor="siemens", seed=1, slices=16, matrix=96), out_dir)
    truth.roi("tumor")["ecv"]                 # true tumor ECV by construction
    truth.series("ct_equilibrium")[0]          # UID, number, folder ... of the equilibrium series

`generate` writes one file per image under out_dir/[sendN/]<study>/<number>_<kind>/ and
out_dir/truth.json (the same content as `Truth.as_dict()`). Modules: anatomy (shapes, labels),
enhancement (tissue and contrast model, units), ct / mr (series plans), images (streaming
writer), dicomio (UIDs, identity, files), vendors (labels from data/phantom_vendors.toml),
seg (reader's annotation), commands (`hccnode phantom`).
"""

from hccnode.phantom.anatomy import Motion, Tumor
from hccnode.phantom.generate import Truth, generate
from hccnode.phantom.spec import SpecError, StudySpec

__all__ = ["Motion", "SpecError", "StudySpec", "Truth", "Tumor", "generate"]
