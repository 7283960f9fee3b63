"""Organ masks from a site's segmentation tool (issue 15, point 3): whole-organ SEGs written by
highdicom with AUTOMATIC algorithm identification, on the phantom CECT. Paper 001's three liver
ROIs and its aortic ROI are placed inside the masks (checked against the phantom's own label
map), a reader's ROI still wins, the SR names the tool, and a SEG that arrives after the first
analysis queues the study again."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage
from pipeline_support import add_labs, by_marker, phantom_store, scratch_dir
from pydicom.sr.codedict import codes
from report_support import analysis_sr, dciodvfy
from test_auto_rois import Phantom, _lps, _inplane_distance, check_ct

from hccnode.imaging import auto_rois as AR
from hccnode.imaging import organ_masks
from hccnode.imaging.measure import AUTOMATIC, ORGAN_MASK, READER
from hccnode.phantom import Motion, StudySpec
from hccnode.phantom.anatomy import Label
from hccnode.pipeline import analyze_study
from hccnode.pipeline.align import Aligner
from hccnode.pipeline.driver import _reference
from hccnode.pipeline.regions import complete_ct, reader_rois
from hccnode.pipeline.study import Study
from hccnode.store import jobs
from hccnode.store.spool import Spool, ingest_file

ALGORITHM = hd.AlgorithmIdentificationSequence(name="TotalSegmentator", family=codes.cid7162.ArtificialIntelligence,
                                               version="2.0")
LIVER_LIKE = (Label.LIVER, Label.PORTAL_VEIN, Label.HEPATIC_VEIN)
# (label, property type, phantom labels): TotalSegmentator's names and codes
CODED = [("liver", codes.SCT.Liver, LIVER_LIKE), ("aorta", codes.SCT.Aorta, (Label.AORTA,)),
         ("spleen", codes.SCT.Spleen, (Label.SPLEEN,)),
         ("autochthon_left", hd.sr.CodedConcept("244849004", "SCT", "Deep muscle of back"), (Label.ERECTOR_SPINAE,))]
# a site's model whose codes are its own: recognised by name only
LOCAL = [(name, hd.sr.CodedConcept(f"ORG{i}", "99SITE", name), labels) for i, (name, _, labels) in enumerate(CODED, 1)]


class Known(Phantom):
    """A phantom already generated (by phantom_store), for its label maps."""

    def __init__(self, spec: StudySpec, out: Path, truth):
        self.spec, self.out, self.truth = spec, out, truth


def organ_seg(phantom: Phantom, kind: str, out: Path, segments=CODED, algorithm_type="AUTOMATIC",
              number: int = 7001) -> Path:
    """A whole-organ SEG drawn by 'TotalSegmentator 2.0' on the phantom series `kind` (its true
    labels there, tumors counted as liver as a whole-liver model draws them)."""
    s = phantom.truth.series(kind)[0]
    by_uid = {str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, (phantom.out / s["folder"]).glob("*.dcm"))}
    vol = phantom.volume(kind)
    lab = phantom.labels(kind, vol)  # [k, j, i] on the volume's grid
    images = [by_uid[uid] for uid in vol.sop_instance_uids]
    pixels = np.zeros(lab.shape + (len(segments),), np.uint8)
    for i, (_, _, labels) in enumerate(segments):
        pixels[..., i] = np.isin(lab, labels) | ((lab >= Label.TUMOR) if Label.LIVER in labels else False)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=name, segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=typ, algorithm_type=algorithm_type,
        algorithm_identification=ALGORITHM if algorithm_type != "MANUAL" else None)
        for i, (name, typ, _) in enumerate(segments, 1)]
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=pixels, segmentation_type="BINARY", segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="Example Hospital AI", manufacturer_model_name="TotalSegmentator", software_versions="2.0.5",
        device_serial_number="0", content_creator_name="SEGMENTATION^SERVICE", series_description="organs")
    path = out / f"organs_{kind}_{number}.dcm"
    seg.save_as(path)
    return path


def _regions(store, study_uid):
    study = Study.load(store, study_uid)
    _, reference = _reference(study, "cect")
    regions = reader_rois(study, reference, Aligner(reference, study_uid))
    complete_ct(regions, reference)
    return regions, reference


def check_in_organs(rois, reference, labels: np.ndarray, notes=()):
    """The three liver ROIs inside the true liver, >= 3 mm from its edge, vessels and the tumor;
    the aortic ROI in the aorta, >= 2 mm from its wall (the same margins as test_auto_rois)."""
    lab, spacing = _lps(reference, labels)
    avoid = np.isin(lab, (Label.AORTA, Label.PORTAL_VEIN, Label.HEPATIC_VEIN)) | (lab >= Label.TUMOR)
    to_avoid = _inplane_distance(avoid, spacing)
    outside_liver = _inplane_distance(~np.isin(lab, LIVER_LIKE) & (lab < Label.TUMOR), spacing)
    outside_aorta = _inplane_distance(lab != Label.AORTA, spacing)
    livers = [r for r in rois if r.role == "liver"]
    assert sorted(r.ref.label for r in livers) == sorted(AR.LIVER_LABELS), notes
    assert [r.role for r in rois].count("aorta") == 1, notes
    for roi in rois:
        m, _ = _lps(reference, sitk.GetArrayFromImage(roi.mask) > 0)
        assert m.any()
        if roi.role == "liver":
            assert (lab[m] == Label.LIVER).all(), (roi.ref.label, np.unique(lab[m]))
            assert to_avoid[m].min() >= 3.0 and outside_liver[m].min() >= 3.0, roi.ref.label
            planes = np.nonzero(m.any(axis=(1, 2)))[0]
            area = m.sum() / len(planes) * spacing[1] * spacing[2]
            assert 80.0 <= area <= 120.0, (roi.ref.label, area)  # paper 001: about 100 mm^2
        else:
            assert (lab[m] == Label.AORTA).all() and outside_aorta[m].min() >= 2.0


def check_named(regions):
    """The liver and aortic ROIs were placed in the organ SEG's masks and name the tool."""
    for roi in regions.by_role("liver") + regions.by_role("aorta"):
        assert roi.ref.source == ORGAN_MASK and "TotalSegmentator 2.0" in roi.ref.placed_in, roi.ref


# ---------------------------------------------------------------- the rule

def test_the_rule_tells_a_whole_organ_tool_mask_from_a_readers_roi():
    assert organ_masks.is_organ_mask("liver", "AUTOMATIC", 1500.0)
    assert organ_masks.is_organ_mask("aorta", "AUTOMATIC", organ_masks.ORGAN_MIN_ML)
    assert not organ_masks.is_organ_mask("liver", "MANUAL", 1500.0)         # a reader's whole liver
    assert not organ_masks.is_organ_mask("liver", "SEMIAUTOMATIC", 1500.0)
    assert not organ_masks.is_organ_mask("liver", "AUTOMATIC", 3 * 0.1 * 2.0)  # 3 ROIs of 100 mm^2 x 20 mm
    assert not organ_masks.is_organ_mask("tumor", "AUTOMATIC", 500.0)       # a tumor is never a tool's
    assert not organ_masks.is_organ_mask(None, "AUTOMATIC", 500.0)


# ---------------------------------------------------------------- placement inside given masks

@pytest.fixture(scope="module")
def cect(tmp_path_factory):
    return Phantom(StudySpec(kind="cect", seed=5, slices=12, matrix=160), tmp_path_factory.mktemp("organs"))


def test_rois_placed_inside_given_organ_masks_follow_the_automatic_rules(cect):
    vol = cect.volume("ct_equilibrium")
    lab = cect.labels("ct_equilibrium", vol)

    def image(labels):
        img = sitk.GetImageFromArray((np.isin(lab, labels) | (lab >= Label.TUMOR) * (Label.LIVER in labels))
                                     .astype(np.uint8))
        img.CopyInformation(vol.image)
        return img

    organs = {"liver": image(LIVER_LIKE), "aorta": image((Label.AORTA,)), "muscle": image((Label.ERECTOR_SPINAE,))}
    placement = AR.place_ct_rois_in_organs(vol, organs)
    check_ct(placement, vol, lab)  # the checks every automatic CT placement passes
    assert placement.notes == []
    assert {r.ref.source for r in placement.rois} == {AUTOMATIC}  # the caller names the mask


def test_only_the_roles_given_are_placed_and_avoid_is_never_touched(cect):
    vol = cect.volume("ct_equilibrium")
    lab = cect.labels("ct_equilibrium", vol)
    liver = sitk.GetImageFromArray(np.isin(lab, LIVER_LIKE).astype(np.uint8))
    liver.CopyInformation(vol.image)
    # avoid the whole right posterior quadrant's core: that ROI must go elsewhere or not at all
    first = AR.place_ct_rois_in_organs(vol, {"liver": liver})
    assert {r.role for r in first.rois} == {"liver"}
    avoid = first.by_role("liver")[1].mask
    again = AR.place_ct_rois_in_organs(vol, {"liver": liver}, avoid=avoid)
    a = sitk.GetArrayFromImage(avoid) > 0
    for roi in again.rois:
        assert not (sitk.GetArrayFromImage(roi.mask) > 0)[a].any(), roi.ref.label
    with pytest.raises(ValueError, match="no ROI rule"):
        AR.place_ct_rois_in_organs(vol, {"tumor": liver})


# ---------------------------------------------------------------- in the pipeline

@pytest.fixture(scope="module")
def moved():
    """A CECT whose portal phase is misregistered (8 mm, 4 degrees), with the organ SEG drawn on
    that portal phase while the reference is the equilibrium phase."""
    root = scratch_dir("organs-moved")
    spec = StudySpec(kind="cect", seed=11, slices=12, matrix=96, noise_sd=2.0,
                     motion={"portal": Motion(shift_mm=(6.0, -5.0, 0.0), rotation_deg=4.0)})
    store, truth, (study,) = phantom_store(root, spec)
    phantom = Known(spec, root / "phantom", truth)
    seg = organ_seg(phantom, "ct_portal", root)
    yield store, phantom, study, seg, root
    store.close()
    shutil.rmtree(root, ignore_errors=True)


def test_an_organ_seg_on_another_misregistered_series_is_carried_and_rois_land_in_the_organs(moved):
    store, phantom, study, seg, _ = moved
    assert ingest_file(Spool(store), seg).outcome == "stored"
    regions, reference = _regions(store, study)
    assert [o.role for o in regions.organs].count("liver") == 1 and not any(o.role == "tumor" for o in regions.organs)
    assert str(pydicom.dcmread(seg).SOPInstanceUID) in regions.registration  # carried through the registration
    truth_eq = phantom.labels("ct_equilibrium", reference)
    check_in_organs(regions.rois, reference, truth_eq, regions.notes)
    check_named(regions)
    # the carried mask fits the reference's liver, the mask as drawn (on the moved phase) does not
    (liver,) = [o for o in regions.organs if o.role == "liver"]
    whole = np.isin(truth_eq, LIVER_LIKE) | (truth_eq >= Label.TUMOR)
    portal = phantom.labels("ct_portal", phantom.volume("ct_portal"))  # the same grid, moved anatomy
    as_drawn = np.isin(portal, LIVER_LIKE) | (portal >= Label.TUMOR)
    carried = sitk.GetArrayFromImage(liver.mask) > 0
    assert _dice(carried, whole) >= 0.95 > _dice(as_drawn, whole), (_dice(carried, whole), _dice(as_drawn, whole))
    assert any("organ SEG" in n and "1 segment(s) not used" in n for n in regions.notes), regions.notes  # spleen


def test_organ_seg_arriving_later_queues_the_study_again_and_gives_liver_ecv_named_in_the_sr():
    root = scratch_dir("organs-late")
    try:
        spec = StudySpec(kind="cect", seed=11, slices=12, matrix=96, noise_sd=2.0)
        store, truth, (study,) = phantom_store(root, spec)
        add_labs(store, truth, [("hct", 100 * truth.data["hct"], "%", -2.0)])
        first = _run_queued(store, expect_reason="stable")
        assert all(m.roi.source != ORGAN_MASK for m in first.measurements if m.roi)
        seg = organ_seg(Known(spec, root / "phantom", truth), "ct_equilibrium", root)
        assert ingest_file(Spool(store), seg, calling_ae="TOTALSEG").outcome == "stored"
        second = _run_queued(store, expect_reason="requeue")  # a new instance queues the study again
        liver = by_marker(second, "ecv_liver")
        assert liver.roi.source == ORGAN_MASK and liver.roi.annotation_uid == str(pydicom.dcmread(seg).SOPInstanceUID)
        assert abs(liver.value - 100 * truth.roi("liver")["ecv"]) <= 0.5  # test_pipeline's automatic-ROI tolerance
        labels = {m.roi.label for m in second.measurements if m.marker == "liver_hu_equilibrium"}
        assert labels == set(AR.LIVER_LABELS)  # three ROIs, not the whole organ
        assert by_marker(second, "aorta_hu_equilibrium").roi.source == ORGAN_MASK
        texts = _sr_texts(second.out_dir / "sr.dcm")
        named = [t for t in texts if "organ mask" in t and "TotalSegmentator 2.0" in t]
        assert len(named) >= 4, texts  # each of the three liver ROIs, the aorta (and the liver group)
        for t in named:
            assert str(pydicom.dcmread(seg).SOPInstanceUID) in t and "Example Hospital AI" in t and "2.0.5" in t
        assert dciodvfy(second.out_dir / "sr.dcm")[0] == []
        evidence = pydicom.dcmread(second.out_dir / "sr.dcm").CurrentRequestedProcedureEvidenceSequence
        assert any(str(s.SeriesInstanceUID) == str(pydicom.dcmread(seg).SeriesInstanceUID)
                   for st in evidence for s in st.ReferencedSeriesSequence)
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _run_queued(store, expect_reason: str):
    (job_id,) = jobs.queue_stable_studies(store, 0.0)
    job = jobs.claim(store, "test", 60.0)
    assert job.id == job_id
    assert store.query("SELECT reason FROM jobs WHERE id = ?", (job_id,))[0]["reason"] == expect_reason
    analysis = analyze_study(store, job.study_uid, job_id=job.id)
    assert jobs.complete(store, job.id, "test", analysis.as_record())
    return analysis


def _sr_texts(path) -> list[str]:
    hd.sr.srread(path)  # highdicom reads it
    sr = analysis_sr(path)  # with its results SR

    def walk(items):
        for i in items or []:
            yield i
            yield from walk(i.get("ContentSequence"))
    return [str(i.TextValue) for i in walk(sr.ContentSequence) if i.get("ValueType") == "TEXT"]


def test_segments_named_only_and_a_readers_liver_roi_wins():
    root = scratch_dir("organs-reader")
    try:
        spec = StudySpec(kind="cect", seed=3, slices=12, matrix=96, noise_sd=2.0, seg_phase="equilibrium")
        store, truth, (study,) = phantom_store(root, spec)
        phantom = Known(spec, root / "phantom", truth)
        seg = organ_seg(phantom, "ct_equilibrium", root, segments=LOCAL)
        assert ingest_file(Spool(store), seg).outcome == "stored"
        regions, reference = _regions(store, study)
        # the codes are the site's own: the names (roi_synonyms.toml) say which organ each is
        assert {o.role for o in regions.organs} == {"liver", "aorta", "muscle"}
        reader_uid = truth.series("seg")[0]["sop_instance_uids"][0]
        for role in ("liver", "aorta", "tumor"):  # the phantom reader drew them (MANUAL): they win
            assert {r.ref.source for r in regions.by_role(role)} == {READER}
            assert {r.ref.annotation_uid for r in regions.by_role(role)} == {reader_uid}
        assert not any(r.ref.source == ORGAN_MASK for r in regions.rois)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_name_only_organ_seg_is_used_when_the_reader_drew_no_liver():
    root = scratch_dir("organs-names")
    try:
        spec = StudySpec(kind="cect", seed=3, slices=12, matrix=96, noise_sd=2.0)
        store, truth, (study,) = phantom_store(root, spec)
        phantom = Known(spec, root / "phantom", truth)
        assert ingest_file(Spool(store), organ_seg(phantom, "ct_equilibrium", root, segments=LOCAL)).outcome == "stored"
        regions, reference = _regions(store, study)
        check_in_organs(regions.rois, reference, phantom.labels("ct_equilibrium", reference), regions.notes)
        check_named(regions)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_readers_whole_liver_drawn_manually_stays_the_readers_roi():
    root = scratch_dir("organs-manual")
    try:
        spec = StudySpec(kind="cect", seed=3, slices=12, matrix=96, noise_sd=2.0)
        store, truth, (study,) = phantom_store(root, spec)
        phantom = Known(spec, root / "phantom", truth)
        seg = organ_seg(phantom, "ct_equilibrium", root, segments=CODED[:1], algorithm_type="MANUAL")
        assert ingest_file(Spool(store), seg).outcome == "stored"
        regions, _ = _regions(store, study)
        assert regions.organs == []
        (liver,) = regions.by_role("liver")
        assert liver.ref.source == READER and liver.ref.label == "liver"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("grow_mm", [-4.0, 4.0])
def test_a_mask_a_few_mm_off_the_organ_edge_still_gives_rois_inside_the_true_liver(cect, grow_mm):
    """A tool's edge is not the true edge: a liver mask grown or shrunk by 4 mm in-plane. Grown,
    the tissue it takes in outside the liver has no liver attenuation, so the deviation rule keeps
    it out of the parenchyma the clearance is measured from; shrunk, the ROIs stay inside it."""
    vol = cect.volume("ct_equilibrium")
    lab = cect.labels("ct_equilibrium", vol)
    liver = np.isin(lab, LIVER_LIKE) | (lab >= Label.TUMOR)
    dx, dy, _ = vol.image.GetSpacing()
    step = int(round(abs(grow_mm) / min(dx, dy)))
    plane = ndimage.generate_binary_structure(3, 1)
    plane[0] = plane[2] = False  # in-plane only
    moved = (ndimage.binary_dilation if grow_mm > 0 else ndimage.binary_erosion)(liver, plane, iterations=step)
    aorta = lab == Label.AORTA
    organs = {}
    for role, m in (("liver", moved), ("aorta", aorta)):
        organs[role] = sitk.GetImageFromArray(m.astype(np.uint8))
        organs[role].CopyInformation(vol.image)
    placement = AR.place_ct_rois_in_organs(vol, organs)
    check_in_organs(placement.rois, vol, lab, placement.notes)
