import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from hccnode.imaging import rois
from hccnode.imaging.volumes import Volume, functional_group, read_series, volume_from_datasets
from hccnode.phantom import StudySpec, generate
from synth_dicom import ct_series

SPACING = (2.0, 1.0, 1.0)  # z, y, x
ORIGIN = (-20.0, -30.0, 100.0)


@pytest.fixture(scope="module")
def study():
    slices = ct_series(np.zeros((6, 32, 40)), spacing=SPACING, origin=ORIGIN)
    return slices, volume_from_datasets(slices)


def _seg(slices, masks, labels, types):
    descs = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=label,
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=t,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for i, (label, t) in enumerate(zip(labels, types))
    ]
    ordered = sorted(slices, key=lambda s: s.ImagePositionPatient[2])
    pixels = np.stack(masks, axis=-1).astype(np.uint8)  # (frames, rows, cols, segments)
    return hd.seg.Segmentation(
        source_images=ordered, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=generate_uid(), series_number=90,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0",
    )


def test_seg_segments_by_code_and_name(study):
    slices, vol = study
    tumor = np.zeros((6, 32, 40), bool)
    tumor[2:4, 10:20, 12:25] = True
    liver = np.zeros_like(tumor)
    liver[1:5, 5:8, 5:30] = True
    other = np.zeros_like(tumor)
    other[0, 0:3, 0:3] = True
    seg = _seg(slices, [tumor, liver, other], ["Lesion A", "Liver_ROI_1", "Spleen"],
               [codes.SCT.Neoplasm, codes.SCT.Tissue, codes.SCT.Spleen])
    out = rois.read_annotation(seg, vol)
    by = {r.ref.label: r for r in out.rois}
    assert by["Lesion A"].role == "tumor"  # by code
    assert by["Liver_ROI_1"].role == "liver"  # by name
    assert np.array_equal(sitk.GetArrayFromImage(by["Lesion A"].mask) > 0, tumor)
    assert np.array_equal(sitk.GetArrayFromImage(by["Liver_ROI_1"].mask) > 0, liver)
    assert by["Lesion A"].ref.source == "reader" and by["Lesion A"].ref.annotation_uid == seg.SOPInstanceUID
    assert any(i.startswith("Spleen:") for i in out.ignored)
    assert rois.referenced_series(seg) == {slices[0].SeriesInstanceUID}


def test_seg_on_another_grid_is_resampled_to_the_reference(study):
    # The reference is not the series the SEG was drawn on: same frame of reference, coarser
    # in-plane grid, shifted by half a voxel. Its mask is the nearest-neighbour resampling.
    slices, vol = study
    tumor = np.zeros((6, 32, 40), bool)
    tumor[1:5, 8:22, 10:30] = True
    seg = _seg(slices, [tumor], ["Tumor"], [codes.SCT.Neoplasm])
    coarse = sitk.Image([20, 16, 6], sitk.sitkFloat32)
    coarse.SetSpacing((2.0, 2.0, 2.0))
    coarse.SetOrigin(np.add(vol.image.GetOrigin(), (0.5, 0.5, 0.0)))
    other = Volume(coarse, "1.2.3", 5, vol.frame_of_reference_uid, [], [])
    (found,) = rois.read_annotation(seg, other).rois
    drawn = sitk.GetImageFromArray(tumor.astype(np.uint8))
    drawn.CopyInformation(vol.image)
    want = sitk.Resample(drawn, coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert sitk.GetArrayViewFromImage(want).any()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(found.mask), sitk.GetArrayViewFromImage(want))


def test_seg_other_frame_of_reference_refused(study):
    slices, vol = study
    m = np.zeros((6, 32, 40), bool)
    m[2, 5:9, 5:9] = True
    seg = _seg(slices, [m], ["Tumor"], [codes.SCT.Neoplasm])
    seg.FrameOfReferenceUID = generate_uid()
    with pytest.raises(rois.AnnotationError, match="frame of reference"):
        rois.read_annotation(seg, vol)


def test_binary_frames_run_across_byte_boundaries():
    # Three 5 x 3 frames are 45 bits: frame 1 starts at bit 15 and frame 2 at bit 30, mid-byte.
    # Frame 0 all set, frame 1 clear, frame 2 only its first pixel (bit 30: byte 3, bit 6).
    packed = bytes([0xFF, 0x7F, 0x00, 0x40, 0x00, 0x00])
    frames = rois.binary_frames(packed, 5, 3, 3)
    assert frames.shape == (3, 5, 3) and frames.dtype == bool
    assert frames[0].all() and not frames[1].any()
    assert frames[2, 0, 0] and frames[2].sum() == 1
    # a trailing pad byte (even length) is allowed; a short Pixel Data is refused
    np.testing.assert_array_equal(rois.binary_frames(packed + b"\0", 5, 3, 3), frames)
    with pytest.raises(ValueError):
        rois.binary_frames(packed[:-1], 5, 3, 3)


def _read_both(monkeypatch, seg, vol):
    """read_annotation through the fast path (checked to be taken) and through highdicom."""
    assert rois._binary_seg_on_reference_slices(seg, vol) is not None
    fast = rois.read_annotation(seg, vol)
    with monkeypatch.context() as m:
        m.setattr(rois, "_binary_seg_on_reference_slices", lambda ds, reference: None)
        general = rois.read_annotation(seg, vol)
    return fast, general


def _assert_same(fast, general):
    assert [r.ref for r in fast.rois] == [r.ref for r in general.rois] and fast.ignored == general.ignored
    for a, b in zip(fast.rois, general.rois):
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a.mask), sitk.GetArrayViewFromImage(b.mask))
        assert a.mask.GetOrigin() == b.mask.GetOrigin() and a.mask.GetDirection() == b.mask.GetDirection()


def test_fast_seg_read_matches_highdicom_on_frames_not_byte_aligned(monkeypatch):
    # 5 x 3 frames (15 bits) of random masks: every frame but the first starts mid-byte.
    rng = np.random.default_rng(0)
    slices = ct_series(np.zeros((4, 5, 3)), spacing=SPACING, origin=ORIGIN)
    vol = volume_from_datasets(slices)
    tumor, liver = rng.random((2, 4, 5, 3)) < 0.5
    tumor[:, 0, 0] = liver[:, 0, 0] = True  # no empty frame (highdicom would leave it out)
    seg = _seg(slices, [tumor, liver], ["Tumor", "Liver"], [codes.SCT.Neoplasm, codes.SCT.Liver])
    fast, general = _read_both(monkeypatch, seg, vol)
    _assert_same(fast, general)
    by = {r.ref.label: sitk.GetArrayFromImage(r.mask) > 0 for r in fast.rois}
    assert np.array_equal(by["Tumor"], tumor) and np.array_equal(by["Liver"], liver)


@pytest.fixture(scope="module", params=[False, True], ids=["single-frame", "enhanced"])
def phantom_seg(request, tmp_path_factory):
    """A phantom CECT study with the reader's SEG on the equilibrium series, and that series."""
    out = tmp_path_factory.mktemp("seg")
    truth = generate(StudySpec(kind="cect", seed=8, slices=10, matrix=64, enhanced=request.param,
                               seg_phase="equilibrium"), out)
    seg = pydicom.dcmread(next((out / truth.series("seg")[0]["folder"]).glob("*.dcm")))
    reference = read_series(sorted((out / truth.series("ct_equilibrium")[0]["folder"]).glob("*.dcm")))
    return seg, reference


def test_fast_seg_read_matches_highdicom_on_phantom(phantom_seg, monkeypatch):
    seg, reference = phantom_seg
    fast, general = _read_both(monkeypatch, seg, reference)
    assert sorted(r.role for r in fast.rois) == ["aorta", "liver", "muscle", "tumor"]
    _assert_same(fast, general)


def test_seg_drawn_partly_off_the_reference_falls_back_and_says_what_it_left_out(study, monkeypatch):
    # The reference lacks the first slice the SEG was drawn on: the fast path declines and the
    # highdicom path keeps the part on the reference's own slices.
    slices, _ = study
    ordered = sorted(slices, key=lambda s: s.ImagePositionPatient[2])
    partial = volume_from_datasets(ordered[1:])
    tumor = np.zeros((6, 32, 40), bool)
    tumor[0:4, 10:20, 12:25] = True
    seg = _seg(slices, [tumor], ["Tumor"], [codes.SCT.Neoplasm])
    assert rois._binary_seg_on_reference_slices(seg, partial) is None
    read = rois.read_annotation(seg, partial)
    (found,) = read.rois
    assert np.array_equal(sitk.GetArrayFromImage(found.mask) > 0, tumor[1:])
    # and says what it left out (the SR carries it as a note)
    assert read.ignored == ["Tumor: 1 of the 4 frames it was drawn on lie outside the reference volume; "
                            "only the part inside is used"]
    monkeypatch.setattr(rois, "_binary_seg_on_reference_slices", lambda *a: None)  # the highdicom path, all of it on
    whole = rois.read_annotation(seg, volume_from_datasets(ordered))                 # the reference: nothing to say
    assert whole.ignored == [] and np.array_equal(sitk.GetArrayFromImage(whole.rois[0].mask) > 0, tumor)


def _off_syntax(seg):
    seg.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"


def _off_locations(seg):
    source = seg.PerFrameFunctionalGroupsSequence[1].DerivationImageSequence[0].SourceImageSequence[0]
    source.SpatialLocationsPreserved = "NO"


def _off_pixels(seg):
    seg.PixelData = seg.PixelData[:-2]


def _off_segment(seg):  # a segment number the Segment Sequence does not have (one segment: a shared group)
    frame = seg.PerFrameFunctionalGroupsSequence[0]
    functional_group(seg, frame, "SegmentIdentificationSequence")[0].ReferencedSegmentNumber = 7


def _off_twice(seg):  # two frames of one segment on the same slice
    first, second = seg.PerFrameFunctionalGroupsSequence[:2]
    second.DerivationImageSequence = first.DerivationImageSequence


@pytest.mark.parametrize("spoil", [_off_syntax, _off_locations, _off_pixels, _off_segment, _off_twice])
def test_fast_seg_read_declines_what_it_does_not_check(study, spoil):
    slices, vol = study
    tumor = np.zeros((6, 32, 40), bool)
    tumor[1:4, 10:20, 12:25] = True
    seg = _seg(slices, [tumor], ["Tumor"], [codes.SCT.Neoplasm])
    assert rois._binary_seg_on_reference_slices(seg, vol) is not None
    spoil(seg)
    assert rois._binary_seg_on_reference_slices(seg, vol) is None


def _rtstruct(slices, contours):
    ds = Dataset()
    ds.SOPClassUID = rois.RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    series, study, fref = Dataset(), Dataset(), Dataset()
    series.SeriesInstanceUID = slices[0].SeriesInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    fref.FrameOfReferenceUID = slices[0].FrameOfReferenceUID
    fref.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([fref])
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    ds.RTROIObservationsSequence = Sequence()
    for n, (name, polys) in enumerate(contours.items(), 1):
        ssr = Dataset()
        ssr.ROINumber = n
        ssr.ROIName = name
        ssr.ReferencedFrameOfReferenceUID = slices[0].FrameOfReferenceUID
        ds.StructureSetROISequence.append(ssr)
        rc = Dataset()
        rc.ReferencedROINumber = n
        rc.ContourSequence = Sequence()
        for pts in polys:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [float(v) for v in np.asarray(pts).ravel()]
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
        obs = Dataset()
        obs.ObservationNumber = n
        obs.ReferencedROINumber = n
        obs.RTROIInterpretedType = "ORGAN"
        ds.RTROIObservationsSequence.append(obs)
    return ds


def _square(x0, y0, x1, y1, z):
    return [(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)]


def test_rtstruct_rasterised_with_hole(study):
    slices, vol = study
    # Slice k=2 lies at z = 100 + 2 x 2 = 104 mm. Square from x = -20+4.5 .. -20+14.5 mm covers
    # voxel columns 5..14 (centres at -20 + i); rows from y = -30+2.5 .. -30+9.5 cover rows 3..9.
    outer = _square(-15.5, -27.5, -5.5, -20.5, 104.0)
    hole = _square(-12.5, -25.5, -9.5, -22.5, 104.0)  # columns 8..10, rows 5..7
    rt = _rtstruct(slices, {"GTV": [outer, hole], "Aorta": [_square(0.5, -10.5, 4.5, -6.5, 106.0)], "Couch": [outer]})
    out = rois.read_annotation(rt, vol)
    by = {r.ref.label: r for r in out.rois}
    tumor = sitk.GetArrayFromImage(by["GTV"].mask) > 0
    expected = np.zeros_like(tumor)
    expected[2, 3:10, 5:15] = True
    expected[2, 5:8, 8:11] = False
    assert by["GTV"].role == "tumor"
    assert np.array_equal(tumor, expected)
    aorta = sitk.GetArrayFromImage(by["Aorta"].mask) > 0
    assert aorta[3].sum() == 16 and aorta.sum() == 16  # columns 21..24, rows 20..23 on slice 3
    assert any(i.startswith("Couch:") for i in out.ignored)
    assert rois.referenced_series(rt) == {slices[0].SeriesInstanceUID}


def test_rtstruct_contour_between_slices_reported(study):
    slices, vol = study
    rt = _rtstruct(slices, {"Liver": [_square(-15.5, -27.5, -5.5, -20.5, 105.0)]})
    out = rois.read_annotation(rt, vol)
    assert not out.rois
    assert out.ignored == ["Liver: contour is not in a slice plane of the reference volume"]


def _sr(slices, groups):
    items = []
    for tracking, finding, region in groups:
        items.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=tracking),
            referenced_region=region, finding_type=finding, finding_sites=[hd.sr.FindingSite(codes.SCT.Liver)],
        ))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Reader^A"),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=items,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=slices, content=report, series_number=91, series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test",
    )


def test_sr_planar_and_3d_regions(study):
    slices, vol = study
    k = 3
    ref = next(s for s in slices if abs(s.ImagePositionPatient[2] - (100 + 2 * k)) < 1e-6)
    # circle centred on pixel (column 20, row 15) -> image coordinates (20.5, 15.5), radius 4 px
    circle = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.CIRCLE, graphic_data=np.array([[20.5, 15.5], [24.5, 15.5]]),
        source_image=hd.sr.SourceImageForRegion.from_source_image(ref),
    )
    # 3-D polygon on slice 1 (z = 102 mm): columns 2..5, rows 2..5
    poly3d = hd.sr.ImageRegion3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
        graphic_data=np.array(_square(-18.5, -28.5, -14.5, -24.5, 102.0) + [(-18.5, -28.5, 102.0)]),
        frame_of_reference_uid=ref.FrameOfReferenceUID,
    )
    sr = _sr(slices, [("Tumor 1", codes.SCT.Neoplasm, circle), ("liver roi 2", codes.SCT.Tissue, poly3d),
                      ("Cyst", codes.SCT.Tissue, circle)])
    out = rois.read_annotation(sr, vol)
    by = {r.ref.label: r for r in out.rois}
    tumor = sitk.GetArrayFromImage(by["Tumor 1"].mask) > 0
    assert by["Tumor 1"].role == "tumor"  # finding code Neoplasm, although the site is Liver
    assert tumor[k].sum() == pytest.approx(np.pi * 16, rel=0.15) and tumor.sum() == tumor[k].sum()
    assert tumor[k, 15, 20] and not tumor[k, 15, 25]
    liver = sitk.GetArrayFromImage(by["liver roi 2"].mask) > 0
    assert by["liver roi 2"].role == "liver"  # by tracking identifier name
    assert liver[1, 2:6, 2:6].all() and liver.sum() == 16
    # "Cyst": finding Tissue and name not mapped; its finding site (Liver) must not make it liver
    assert "Cyst" not in by and any(i.startswith("Cyst:") for i in out.ignored)
    assert by["Tumor 1"].ref.annotation_uid == sr.SOPInstanceUID
    assert rois.referenced_series(sr) == {slices[0].SeriesInstanceUID}


def test_synonyms_file_checked(tmp_path):
    p = tmp_path / "syn.toml"
    p.write_text('[names]\nspleen = ["spleen"]\n')
    with pytest.raises(ValueError, match="unknown role"):
        rois.load_synonyms(p)
    p.write_text('[names]\ntumor = ["x"]\nliver = ["X"]\n')
    with pytest.raises(ValueError, match="both"):
        rois.load_synonyms(p)
    syn = rois.load_synonyms()
    assert syn.role("Liver_ROI_3") == "liver"
    assert syn.role("anything", [("SCT", "44947003")]) == "muscle"
    assert syn.role("Spleen") is None
    # legacy SNOMED-RT designators of older SEGs: T-62000 is SCT 10200004 (liver) in PS3.16
    assert syn.role("Region 1", [("SRT", "T-62000")]) == "liver"


def test_unknown_object_refused(study):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3"
    ds.Modality = "CT"
    with pytest.raises(rois.AnnotationError, match="1.2.3"):
        rois.read_annotation(ds, study[1])


def test_sr_volumetric_regions_on_two_slices(study):
    slices, vol = study
    by_z = {round(s.ImagePositionPatient[2]): s for s in slices}
    regions = [
        hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,  # closed polyline = polygon in 2-D SCOORD
            # pixel-corner coordinates 10..14 -> pixels 10..13 (centres 10.5..13.5) on slices 1 and 2
            graphic_data=np.array([[10.0, 10.0], [14.0, 10.0], [14.0, 14.0], [10.0, 14.0], [10.0, 10.0]]),
            source_image=hd.sr.SourceImageForRegion.from_source_image(by_z[z]),
        )
        for z in (102, 104)
    ]
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Aorta"),
        referenced_regions=regions, finding_type=codes.SCT.Aorta,
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Reader^A"),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(evidence=slices, content=report, series_number=92, series_instance_uid=generate_uid(),
                                 sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test")
    out = rois.read_annotation(sr, vol)
    assert [r.role for r in out.rois] == ["aorta"]
    m = sitk.GetArrayFromImage(out.rois[0].mask) > 0
    # corners 10..14 enclose pixel centres 10.5..13.5: pixels 10..13 on slices 1 and 2, 32 in all
    assert m[1, 10:14, 10:14].all() and m[2, 10:14, 10:14].all() and m.sum() == 32


def test_fractional_seg_thresholded_at_half(study):
    slices, vol = study
    frac = np.zeros((6, 32, 40), np.float32)
    frac[1, 4:8, 4:8] = 0.8  # inside
    frac[1, 8:10, 4:8] = 0.3  # below one half: outside
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Tumor", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sorted(slices, key=lambda s: s.ImagePositionPatient[2]), pixel_array=frac,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL, segment_descriptions=[desc],
        series_instance_uid=generate_uid(), series_number=93, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="0", device_serial_number="0",
    )
    out = rois.read_annotation(seg, vol)
    m = sitk.GetArrayFromImage(out.rois[0].mask) > 0
    assert m[1, 4:8, 4:8].all() and m.sum() == 16


_SYN = rois.load_synonyms()


@given(
    pair=st.sampled_from(sorted(_SYN.names.items())),
    sep=st.sampled_from([" ", "_", "-", ".", "__"]),
    number=st.one_of(st.none(), st.integers(0, 99)),
    upper=st.booleans(),
)
def test_label_variants_map_to_their_role(pair, sep, number, upper):
    label, role = pair
    text = label.replace(" ", sep)
    text = text.upper() if upper else text.title()
    if number is not None:
        text = f"{text}{sep}{number}"
    assert _SYN.role(text) == role
    assert rois.normalise_label(rois.normalise_label(text)) == rois.normalise_label(text)


@pytest.mark.parametrize("rows,columns,frames", [(5, 3, 7), (4, 4, 5), (3, 3, 9)])
def test_binary_frames_window_equals_the_same_frames_of_a_full_decode(rows, columns, frames):
    """Frames decoded one at a time (as the masks are filled) equal those of a full decode, also
    when frames start in the middle of a byte."""
    full = np.random.default_rng(rows * frames).integers(0, 2, (frames, rows, columns)).astype(bool)
    packed = np.packbits(full.ravel(), bitorder="little").tobytes()
    np.testing.assert_array_equal(rois.binary_frames(packed, rows, columns, frames), full)
    for first in range(frames):
        np.testing.assert_array_equal(rois.binary_frames(packed, rows, columns, frames, first, 1), full[first:first + 1])
    np.testing.assert_array_equal(rois.binary_frames(packed, rows, columns, frames, 2, 3), full[2:5])
