"""Issue 17: `hccnode viewer check` (make viewer-check) on real parts: Orthanc with its DICOMweb and
ServeFolders plugins serving the pinned OHIF, a node forwarding to it, a phantom CECT study sent by
storescu, OHIF opened in Debian's headless Chromium through chromedriver. One run of the check
(about 70-90 s on 2 shared cores: ~30 s for the node's analysis, the rest in the browser, stepping
through the SR's 12 measurements) serves every test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, in_ci, need

from hccnode.viewer import install
from hccnode.viewer.stack import PLUGIN_DIR, PLUGINS

pytestmark = pytest.mark.network


def _require(ok: bool, what: str) -> None:
    if not ok:
        msg = f"{what} (make viewer-deps installs it)"
        pytest.fail(msg) if in_ci() else pytest.skip(msg)


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """(exit code, result.json, output folder, stdout) of one `hccnode viewer check`."""
    for tool in ("Orthanc", "storescu", "chromium", "chromedriver"):
        need(tool)
    for plugin in PLUGINS:
        _require((PLUGIN_DIR / plugin).is_file(), f"Orthanc plugin {plugin} is not installed")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _require(False, "the selenium package is not installed")
    viewer = ROOT / ".viewer"
    _require(install.installed(viewer), f"OHIF {install.OHIF_VERSION} is not installed in {viewer}")
    out = tmp_path_factory.mktemp("viewer-check")
    r = subprocess.run([sys.executable, "-m", "hccnode", "viewer", "check", "--dir", str(viewer), "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=out)
    path = out / "result.json"
    assert path.exists(), f"no result.json; exit {r.returncode}: {r.stderr[-2000:]}"
    return r.returncode, json.loads(path.read_text()), out, r.stdout


def test_check_writes_its_result_and_a_screenshot_per_step(checked):
    _, result, out, stdout = checked
    assert result["ohif"] == f"@ohif/app@{install.OHIF_VERSION}"
    assert result["orthanc"]["dicom-web"] and result["orthanc"]["serve-folders"]
    assert sorted(p.name for p in out.glob("*.png")) == ["01-study.png", "02-sr.png", "03-seg.png", "04-map.png",
                                                       "05-pdf.png"]
    assert set(result["screenshots"]) == {p.name for p in out.glob("*.png")}
    for step in ("study", "sr", "seg", "map", "pdf"):
        assert "errors" in result[step]["console"]        # every step reports its console
    assert "/ohif/viewer?StudyInstanceUIDs=" in stdout and "passed:" in stdout


def test_ohif_lists_our_segments_and_opens_our_pdf(checked):
    _, result, _, _ = checked
    seg = result["seg"]
    # the phantom reader's SEG names the tumour, liver and aorta; ours carries them through
    assert {"Tumor (reader)", "Liver (reader)", "Aorta (reader)"} <= set(seg["ours"])
    assert seg["listed"] == seg["ours"] and seg["displayed"]
    pdf = result["pdf"]
    assert pdf["displayed"] and pdf["head"] == "%PDF-" and pdf["bytes"] > 1000


def test_sr_values_are_compared_to_what_we_wrote(checked):
    _, result, _, _ = checked
    sr = result["sr"]
    # our SR's ROI measurements are read back from the file Orthanc holds, whatever OHIF shows
    # (HU, enhancement, ECV for tumour and liver, HU and enhancement for the aorta, at the least)
    assert sr["ours"] >= 8
    assert all(m["label"] and m["unit"] and m["group"] for m in sr["measurements"])
    assert sr["shown"] == sum(m["shown"] is not None for m in sr["measurements"])


def test_everything_displays_and_the_values_agree(checked):
    code, result, _, _ = checked
    assert result["passed"] and code == 0
    # every value of every measurement group on an image, on a line of the page naming its label
    sr = result["sr"]
    assert sr["shown"] == sr["ours"] and all(m["page_line"].startswith(m["label"] + ": ") for m in sr["measurements"])
    # the unenhanced and equilibrium values of an ROI are in boxes of their own (OHIF labels both
    # "Attenuation Coefficient"), and the tumour's Volume (once a sixth line OHIF cut off) is drawn
    assert {m["group"] for m in sr["measurements"]} >= {"Tumor (reader), unenhanced", "Tumor (reader), equilibrium"}
    assert any(m["label"] == "Volume" and m["shown"] for m in sr["measurements"])
    mp = result["map"]
    assert mp["displayed"] and mp["ohif_value_unscaled"] == pytest.approx(mp["ours"], rel=1e-3)
    assert mp["colorbar"]["shown"] and mp["colorbar"]["colormaps"] == ["rainbow_2"]   # OHIF's legend for it


# -- the check's own arithmetic, without a browser ---------------------------------------------------
def test_a_value_counts_as_shown_only_at_the_decimals_printed():
    from hccnode.viewer.check import number_shown
    assert number_shown(41.474874, ["I", "9", "41.47"]) == "41.47"     # OHIF prints toFixed(2)
    assert number_shown(41.474874, ["41.48"]) is None                   # off by one in the last digit
    assert number_shown(41.474874, ["41"]) is None                      # a counter is not a measurement
    assert number_shown(34.0, ["34"]) == "34"
    assert number_shown(28.7972, ["28.8"]) == "28.8"


def test_our_map_value_is_read_at_the_voxel_nearest_the_probe():
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from hccnode.viewer.check import map_value_at
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.NumberOfFrames = 4, 5, 3
    ds.BitsAllocated, ds.SamplesPerPixel, ds.PhotometricInterpretation = 32, 1, "MONOCHROME2"
    values = np.arange(60, dtype=np.float32).reshape(3, 4, 5)          # value = 20 k + 5 row + col
    ds.FloatPixelData = values.tobytes()
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [2.0, 3.0]          # rows 2 mm apart, columns 3 mm
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k, z in enumerate((-10.0, -15.0, -20.0)):                       # frame 0 superior, as ours
        f = Dataset()
        f.PlanePositionSequence = [Dataset()]
        f.PlanePositionSequence[0].ImagePositionPatient = [100.0, 50.0, z]
        frames.append(f)
    ds.PerFrameFunctionalGroupsSequence = frames
    # x 100 + 3*2 + 1.0 -> column 2, y 50 + 2*3 - 0.6 -> row 3 (nearest), z -16 -> frame 1
    value, centre = map_value_at(ds, [107.0, 55.4, -16.0])
    assert value == 20 * 1 + 5 * 3 + 2
    assert centre == [106.0, 56.0, -15.0]
