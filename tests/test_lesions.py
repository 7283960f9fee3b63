"""Issue 16 points 3-5 on phantom studies with a reader's own annotation: lesions (extent apart
from measurement ROIs, the lesion each paper uses), the aorta at each value's level, and the
papers' equilibrium timing. Expected values are worked from the phantom's truth and the papers'
formulas and sentences (hccnode/data/protocols.toml quotes them)."""

from __future__ import annotations

import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
from phantom_index import index_files
from pipeline_support import add_labs, by_marker, phantom_store, scratch_dir
from report_support import analysis_sr, dciodvfy
from pydicom.sr.codedict import codes
from scipy import ndimage

from hccnode.imaging import phase_timing
from hccnode.imaging.lesions import EXTENT, MEASUREMENT, load_part_words, part_of
from hccnode.imaging.measure import READER, RoiRef
from hccnode.imaging.rois import RoiMask
from hccnode.phantom import StudySpec, generate
from hccnode.pipeline import analyze_study, lesions
from hccnode.pipeline.lesions import protocols
from hccnode.store.db import Store

HCT = 0.40  # the phantom's default hematocrit
SPEC = dict(kind="cect", seed=21, slices=16, matrix=96, noise_sd=0.5, seg_phase="equilibrium",
            tumor_diameters_mm=(25.0, 45.0))


def _equilibrium(truth, root):
    s = truth.series("ct_equilibrium")[0]
    return sorted((pydicom.dcmread(f) for f in (root / s["folder"]).glob("*.dcm")), key=lambda d: int(d.InstanceNumber))


def _phantom_masks(truth, root, images) -> dict[str, np.ndarray]:
    """The phantom reader's segments (tumor, liver, aorta) as (z, y, x) arrays on the equilibrium images."""
    s = truth.series("seg")[0]
    seg = hd.seg.segread(next((root / s["folder"]).glob("*.dcm")))
    arr = seg.get_pixels_by_source_instance([str(d.SOPInstanceUID) for d in images], segment_numbers=[1, 2, 3])
    shutil.rmtree(root / s["folder"])  # replaced by the test's own annotation
    return {"tumor": arr[..., 0] > 0, "liver": arr[..., 1] > 0, "aorta": arr[..., 2] > 0}


def _write_seg(root, images, segments: list[tuple[str, object, np.ndarray]]) -> None:
    """A reader's SEG on the equilibrium images: (label, SNOMED type, mask z y x) per segment."""
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=label, segmented_property_type=typ, algorithm_type="MANUAL",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure if typ == codes.SCT.Neoplasm
        else codes.SCT.AnatomicalStructure) for n, (label, typ, _) in enumerate(segments, 1)]
    stack = np.stack([m for *_, m in segments], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=stack, segmentation_type="BINARY", segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=9100, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test reader", software_versions="1", device_serial_number="1")
    (root / "baseline" / "9100_reader").mkdir(parents=True)
    seg.save_as(root / "baseline" / "9100_reader" / "SEG.dcm")


def _tumours(tumor: np.ndarray) -> list[np.ndarray]:
    """The phantom's tumours, largest first."""
    lab, n = ndimage.label(tumor, structure=np.ones((3, 3, 3), bool))
    parts = [lab == i for i in range(1, n + 1)]
    return sorted(parts, key=lambda p: -int(p.sum()))


def _three_pixels(mask2d: np.ndarray, margin: int = 2) -> list[tuple[int, int]]:
    """Three pixels of a slice's mask, `margin` pixels inside its edge, spread apart (one-pixel
    ROIs: 3.96 mm pixels are 15.7 mm², paper 002's 10-20 mm²)."""
    inner = ndimage.binary_erosion(mask2d, iterations=margin)
    ys, xs = np.nonzero(inner)
    order = np.argsort(xs)
    return [(int(ys[order[i]]), int(xs[order[i]])) for i in (0, len(order) // 2, len(order) - 1)]


def _store(root, truth, hct=True):
    store = Store(root / "data")
    index_files(store, root / "phantom")
    if hct:
        add_labs(store, truth, [("hct", 100 * HCT, "%", -2.0)])
    study = truth.data["studies"][0]["study_instance_uid"]
    return store, study


@pytest.fixture(scope="module")
def two_lesions():
    """Two tumours (25 and 45 mm): the reader draws both extents ('Tumor extent') and, on each
    tumour's largest slice, three one-pixel measurement ROIs ('Tumor ROI')."""
    root = scratch_dir("lesions")
    truth = generate(StudySpec(**SPEC), root / "phantom")
    images = _equilibrium(truth, root / "phantom")
    masks = _phantom_masks(truth, root / "phantom", images)
    rois = np.zeros_like(masks["tumor"])
    for t in _tumours(masks["tumor"]):
        k = int(np.argmax(t.sum(axis=(1, 2))))
        for y, x in _three_pixels(t[k]):
            rois[k, y, x] = True
    _write_seg(root / "phantom", images, [("Tumor extent", codes.SCT.Neoplasm, masks["tumor"]),
                                          ("Tumor ROI", codes.SCT.Neoplasm, rois),
                                          ("Liver", codes.SCT.Liver, masks["liver"]),
                                          ("Aorta", codes.SCT.Aorta, masks["aorta"])])
    store, study = _store(root, truth)
    yield analyze_study(store, study), truth
    store.close()
    shutil.rmtree(root, ignore_errors=True)


def test_lesions_extent_apart_from_measurement_rois_and_the_largest_feeds_paper_001(two_lesions):
    a, truth = two_lesions
    pixel = truth.data["geometry"]["pixel_spacing_mm"]
    sizes = sorted((r["diameter_mm"] for n, r in truth.data["studies"][0]["rois"].items() if n.startswith("tumor")),
                   reverse=True)
    assert sizes == [45.0, 25.0]
    diameters = [m for m in a.measurements if m.marker == "tumor_diameter"]
    # each lesion's size from its extent (within a pixel), never from its 4 mm ROIs
    assert len(diameters) == 2
    assert diameters[0].value == pytest.approx(45, abs=pixel) and diameters[1].value == pytest.approx(25, abs=pixel)
    assert [m.roi.label for m in diameters] == ["Tumor extent (lesion 1)", "Tumor extent (lesion 2)"]
    ecvs = [m for m in a.measurements if m.marker == "ecv_tumor"]
    # ECV = (1 - HCT) x dHU_tumor / dHU_aorta x 100 (paper 001) over each lesion's three ROIs,
    # on the phantom's truth: 35 % in both tumours
    want = 100 * (1 - HCT) * (truth.roi("tumor")["phases"]["equilibrium"]["delta_hu"]
                              / truth.roi("aorta")["phases"]["equilibrium"]["delta_hu"])
    assert want == pytest.approx(35.0, abs=0.05)
    assert [m.roi.label for m in ecvs] == ["Tumor ROI (lesion 1)", "Tumor ROI (lesion 2)"]
    assert all(abs(m.value - want) <= 1.0 for m in ecvs), [m.value for m in ecvs]
    assert all(m.roi.source == READER for m in ecvs)
    card = {r["card_id"]: r for r in a.model_results}["p001-tumor-ecv"]
    assert card["status"] == "evaluated"
    used = card["inputs_used"]["tumor_ecv_hu"]
    assert used["value"] == ecvs[0].value  # the largest lesion's, as paper 001 says
    assert f"lesion 1 of 2 ({diameters[0].value:.0f} mm)" in used["source"]
    assert "the largest representative lesion" in used["source"]
    for p in a.files:  # extents and measurement ROIs overlap in the SEG; the SR names each lesion's ROIs
        assert dciodvfy(p)[0] == [], p.name


def _roi(mask: np.ndarray, label: str) -> tuple[RoiMask, np.ndarray]:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    return RoiMask(image, RoiRef("tumor", READER, "1.2.3", label)), mask


def test_small_rois_alone_give_no_tumour_size_and_paper_002_gets_no_size():
    # three plain "Tumor" ROIs of one voxel on one slice of a 1 x 4 x 4 mm grid: measurement ROIs
    grid = np.zeros((6, 40, 40), bool)
    rois = []
    for x in (10, 20, 30):
        m = grid.copy()
        m[3, 20, x] = True
        rois.append(_roi(m, f"Tumor {x}"))
    found, shown, notes = lesions.find([r for r, _ in rois], [m for _, m in rois], (5.0, 4.0, 4.0))
    assert len(found) == 1 and found[0].extent is None and found[0].diameter_mm is None
    assert len(found[0].rois) == 3 and "tumor extent" in found[0].size_reason
    assert notes and "one slice" in notes[0]
    choice = lesions.for_paper(found, "002")
    assert choice.lesions == found  # one lesion: that one, and its size not measured
    # two lesions, one without an extent: which is largest is not known, so no paper chooses
    outline = grid.copy()
    outline[1:5, 5:15, 5:15] = True  # 40 mm on 4 slices: a plain label read as an outline
    found, _, _ = lesions.find([r for r, _ in rois] + [_roi(outline, "Tumor")[0]], [m for _, m in rois] + [outline],
                               (5.0, 4.0, 4.0))
    assert [les.diameter_mm is None for les in found] == [False, True]
    assert found[0].diameter_mm == pytest.approx(np.hypot(40, 40), abs=4.0)
    for paper in ("001", "002", "003"):
        why = lesions.for_paper(found, paper).reason
        assert why and "largest" in why and "not known" in why


def test_label_words_say_extent_or_measurement():
    words = load_part_words()
    assert part_of("Tumor extent", words) == EXTENT
    assert part_of("Lesion_outline_2", words) == EXTENT
    assert part_of("Tumor ROI 3", words) == MEASUREMENT
    assert part_of("Target lesion ROI", words) == MEASUREMENT  # a size is never taken from a measurement ROI
    assert part_of("Tumor", words) is None and part_of(None, words) is None


def test_two_largest_for_paper_002_and_the_largest_for_001_003():
    grid = np.zeros((8, 40, 40), bool)
    masks = []
    for (y0, y1) in ((2, 8), (10, 22), (25, 35)):  # 6, 12 and 10 voxels wide: 24, 48, 40 mm
        m = grid.copy()
        m[2:6, y0:y1, 5:8] = True
        masks.append(m)
    found, _, _ = lesions.find([_roi(m, "Tumor")[0] for m in masks], masks, (5.0, 4.0, 4.0))
    assert [les.number for les in found] == [1, 2, 3]
    widths = [les.diameter_mm for les in found]
    assert widths == sorted(widths, reverse=True)
    assert lesions.for_paper(found, "001").lesions == found[:1]
    assert lesions.for_paper(found, "003").lesions == found[:1]
    two = lesions.for_paper(found, "002")
    assert two.lesions == found[:2] and "two largest lesions" in two.text and "does not state" in two.text


def test_aorta_at_the_tumours_level_for_tumour_ecv_and_at_the_liver_rois_level_for_liver_ecv():
    """Paper 001: dHU_{tumor-aorta} and dHU_{liver-aorta} on the tumour's and the liver ROIs'
    planes. The aorta is made X HU brighter in the equilibrium phase on the tumour's slices only;
    the liver ROIs lie on other slices."""
    x_hu = 60.0
    root = scratch_dir("levels")
    try:
        truth = generate(StudySpec(**{**SPEC, "tumor_diameters_mm": (45.0,)}), root / "phantom")
        images = _equilibrium(truth, root / "phantom")
        masks = _phantom_masks(truth, root / "phantom", images)
        tumour_slices = sorted(set(np.flatnonzero(masks["tumor"].any(axis=(1, 2)))))
        free = [k for k in np.flatnonzero(masks["liver"].sum(axis=(1, 2)) > 150) if k not in tumour_slices]
        k_liver = int(free[len(free) // 2])
        livers = np.zeros_like(masks["liver"])
        for y, x in _three_pixels(masks["liver"][k_liver], margin=3):
            livers[k_liver, y - 1:y + 2, x - 1:x + 2] = True  # 3 x 3 pixels, ~140 mm², paper 001 "approximately 100 mm²"
        for k, ds in enumerate(images):  # the masks' slice k is the k-th image in instance order
            if k in tumour_slices:
                arr = ds.pixel_array.copy()
                arr[masks["aorta"][k]] += int(round(x_hu / float(ds.RescaleSlope)))
                ds.PixelData = arr.tobytes()
                ds.save_as(ds.filename)
        _write_seg(root / "phantom", images, [("Tumor", codes.SCT.Neoplasm, masks["tumor"]),
                                              ("Liver ROI", codes.SCT.Liver, livers),
                                              ("Aorta", codes.SCT.Aorta, masks["aorta"])])
        store, study = _store(root, truth)
        a = analyze_study(store, study)
        store.close()
        _check_lumen_rois(truth, root / "phantom", x_hu, {str(images[k].SOPInstanceUID) for k in tumour_slices})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    eq = {n: truth.roi(n)["phases"]["equilibrium"]["delta_hu"] for n in ("tumor", "liver", "aorta")}
    # by hand: (1 - 0.40) x dHU_tissue / dHU_aorta x 100, the aorta X HU brighter on the tumour's slices
    want_tumour = 100 * (1 - HCT) * eq["tumor"] / (eq["aorta"] + x_hu)   # 0.6 x 67.5 / 175.8 = 23.0 %
    want_liver = 100 * (1 - HCT) * eq["liver"] / eq["aorta"]             # 0.6 x 55.9 / 115.8 = 29.0 %
    tumour, liver = by_marker(a, "ecv_tumor"), by_marker(a, "ecv_liver")
    assert tumour.value == pytest.approx(want_tumour, abs=1.0), tumour.notes
    assert liver.value == pytest.approx(want_liver, abs=1.0), liver.notes
    assert abs(want_tumour - want_liver) > 4  # one pooled aorta could not give both
    assert "at the level of lesion 1" in tumour.notes[0] and "same level" in tumour.notes[0]
    assert "at the level of the liver ROIs" in liver.notes[0]


def _check_lumen_rois(truth, root, x_hu: float, brightened: set[str]) -> None:
    """The node's own aortic ROIs on the brightened slices: paper 001's ~100 mm² disk (the pixel
    count closest to it) in the aorta (its equilibrium HU + X), and paper 002's ROI over >= 50 %
    of the lumen."""
    import SimpleITK as sitk

    from hccnode.imaging import reference_level
    from hccnode.imaging.volumes import read_series

    vol = read_series(sorted((root / truth.series("ct_equilibrium")[0]["folder"]).glob("*.dcm")))
    values = sitk.GetArrayFromImage(vol.image)
    want_hu = truth.roi("aorta")["phases"]["equilibrium"]["hu"] + x_hu
    bright = [k for k, uid in enumerate(vol.sop_instance_uids) if uid in brightened]
    assert len(bright) == len(brightened)
    pixel_mm2 = float(np.prod(vol.image.GetSpacing()[:2]))
    disk, what = reference_level.lumen_roi(values, vol.image, bright)
    assert disk is not None, what
    for k in np.flatnonzero(disk.any(axis=(1, 2))):
        assert abs(disk[k].sum() * pixel_mm2 - 100.0) <= pixel_mm2  # paper 001: "approximately 100 mm²"
    assert values[disk].mean() == pytest.approx(want_hu, abs=3.0)
    wide, what = reference_level.lumen_roi(values, vol.image, bright, area_mm2=None)
    assert wide is not None, what
    assert reference_level.lumen_coverage(wide, values, vol.image) >= reference_level.MIN_COVERAGE
    assert not (disk & ~wide).any()  # the disk lies in the lumen the wide ROI covers
    assert reference_level.lumen_coverage(disk, values, vol.image) <= reference_level.lumen_coverage(wide, values, vol.image)


def test_paper_timing_windows_by_hand():
    rules = protocols()["timing"]
    r1, r0 = rules["001"], rules["000"]
    # paper 001: "120–180 s for the equilibrium phase", both ends in
    for delay, inside in ((120.0, True), (150.0, True), (180.0, True), (119.0, False), (181.0, False), (600.0, False)):
        assert (phase_timing.outside_window(delay, r1["window_s"], "001", r1) is None) == inside, delay
    # paper 000: "equilibrium phase (2 minutes)", read as the delays that round to 2 minutes
    assert phase_timing.outside_window(120.0, r0["window_s"], "000", r0) is None
    assert "180 s" in phase_timing.outside_window(180.0, r0["window_s"], "000", r0)
    assert "not in the series' headers" in phase_timing.outside_window(None, r1["window_s"], "001", r1)


def test_a_late_equilibrium_phase_reports_the_ecv_and_its_delay_but_not_paper_001s_cutoff():
    root = scratch_dir("timing")
    try:
        store, truth, (study,) = phantom_store(root, StudySpec(kind="cect", seed=8, slices=10, matrix=64, noise_sd=2.0,
                                                               seg_phase="equilibrium", equilibrium_delay_s=300.0))
        add_labs(store, truth, [("hct", 100 * HCT, "%", -2.0)])
        a = analyze_study(store, study)
        sr = analysis_sr(a.out_dir / "sr.dcm")
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    m = by_marker(a, "ecv_tumor")
    assert m.value is not None  # reported
    assert [s.delay_s for s in m.series if s.phase == "equilibrium"] == [300.0]
    cards = {r["card_id"]: r for r in a.model_results}
    for card in ("p001-tumor-ecv", "p001-liver-ecv"):
        assert cards[card]["status"] == "not_evaluated"
        why = " ".join(cards[card]["reasons"])
        assert "300 s after contrast start" in why and "120-180 s" in why and "is not applied" in why
    texts = " ".join(str(i.get("TextValue", "")) for i in _walk(sr.ContentSequence))
    assert "300 s after contrast start" in texts


def _walk(items):
    for i in items:
        yield i
        yield from _walk(i.get("ContentSequence", []))


def test_protocol_quotes_are_the_papers_words():
    """Each quote of hccnode/data/protocols.toml is in its paper (compared when the papers are
    beside the repository, at ../shared/papers)."""
    from pathlib import Path

    papers = Path(__file__).resolve().parents[1].parent / "shared" / "papers"
    data = protocols()
    assert set(data["lesions"]) == {"000", "001", "002", "003", "004"} and set(data["timing"]) == {"000", "001"}
    assert [data["lesions"][p]["count"] for p in ("000", "001", "002", "003", "004")] == [1, 1, 2, 1, 1]
    assert data["timing"]["001"]["window_s"] == [120.0, 180.0] and "120–180 s" in data["timing"]["001"]["quote"]
    assert "(2 minutes)" in data["timing"]["000"]["quote"]
    if not papers.is_dir():
        pytest.skip(f"the paper texts are not at {papers}: quotes checked against the card data only")
    for section in ("lesions", "timing"):
        for paper, rule in data[section].items():
            text = next(papers.glob(f"{paper}_*.txt")).read_text(encoding="utf-8")
            assert rule["quote"] in text, (section, paper)


def test_paper_003_muscle_on_the_tumours_slices():
    """T2 SIR = tumour T2 / erector spinae T2 "at the same slice" (paper 003): the muscle's part
    on the tumour's slices, not the muscle elsewhere."""
    from hccnode.pipeline.mr import _t2_sir

    t2 = np.full((6, 20, 20), 100.0)
    t2[:, 10:16, 2:8] = 50.0      # muscle: 50 on every slice ...
    t2[4, 10:16, 2:8] = 80.0      # ... but 80 on the tumour's slice
    t2[4, 2:8, 10:16] = 160.0     # tumour on slice 4
    tumour = np.zeros(t2.shape, bool)
    tumour[4, 2:8, 10:16] = True
    muscle = np.zeros(t2.shape, bool)
    muscle[:, 10:16, 2:8] = True
    roi, _ = _roi(tumour, "Tumor ROI")
    les = lesions.Lesion(1, None, roi, [tumour])
    value, why, notes = _t2_sir(t2, [_roi(muscle, "Erector spinae")], les)
    assert why is None and value == pytest.approx(160.0 / 80.0)  # not 160 / 55 over all slices
    assert "same slice" in notes[0]
    muscle[4:] = False  # the muscle ROI stops above the tumour
    value, why, _ = _t2_sir(t2, [_roi(muscle, "Erector spinae")], les)
    assert value is None and "same slice" in why


def test_paper_002_nomogram_gets_no_size_from_small_rois(tmp_path):
    """Three small ROIs and no extent: NIC-AP is read in them, but the nomogram's "tumor size"
    is not measured and the card says why (no 4 mm "diameter")."""
    from hccnode.imaging.measure import Measurement, SeriesRef
    from hccnode.pipeline.findings import Findings
    from hccnode.pipeline.models import run_cards

    grid = np.zeros((6, 40, 40), bool)
    rois = []
    for x in (10, 20, 30):
        m = grid.copy()
        m[3, 20, x] = True
        rois.append(_roi(m, "Tumor ROI"))
    found, _, _ = lesions.find([r for r, _ in rois], [m for _, m in rois], (5.0, 4.0, 4.0))
    les = found[0]
    series = (SeriesRef("1.2.3.4", "arterial iodine map", 35.0),)
    f = Findings(lesions=found)
    f.add(Measurement.of("paper002.nic_ap", "nic_ap_tumor", 25.0, roi=les.region.ref, series=series))
    f.add(Measurement.missing("tumor_diameter", "mm", "size.max_inplane_diameter", les.size_reason,
                              roi=les.region.ref, series=series))

    class NoLabs:
        def value(self, paper, name):
            return None, "no lab in this test"

        index = value

    store = Store(tmp_path / "data")
    results = {r["card_id"]: r for r in run_cards(store, "1.2.3", f, NoLabs(), follow_up=False)}
    store.close()
    nomogram = results["p002-nomogram"]
    assert nomogram["status"] == "not_evaluated"
    assert any("tumor_diameter not measured" in r and "tumor extent" in r for r in nomogram["reasons"])
    cutoff = results["p002-nicap-cutoff"]  # NIC-AP 25 % > 21.471 %: read in the three ROIs
    assert cutoff["status"] == "evaluated" and cutoff["inputs_used"]["nic_ap"]["value"] == 25.0
    assert "the study's one lesion" in cutoff["inputs_used"]["nic_ap"]["source"]
