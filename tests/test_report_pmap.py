import io
import highdicom as hd
import numpy as np
import pydicom
import pytest
from report_support import dciodvfy, read_back_map, shared_case, shared_outputs

from hccnode.report import Reference
from hccnode.report.pmap import LUT_LABEL, SLOPE, build_ecv_map, padding_for
from hccnode.report.templates import load_template


@pytest.fixture(scope="session")
def case(tmp_path_factory):
    return shared_case(tmp_path_factory)


@pytest.fixture(scope="session")
def pm_path(tmp_path_factory):
    return shared_outputs(tmp_path_factory)["pm"]


def test_map_is_valid_dicom(pm_path):
    errors, warnings = dciodvfy(pm_path)
    assert errors == [] and warnings == []


def test_map_has_one_frame_per_reference_image_and_values_equal_the_input(case, pm_path):
    # OHIF 3.12's adapter needs a frame for every image of the referenced series (issue 17).
    ds = pydicom.dcmread(pm_path)
    assert int(ds.NumberOfFrames) == len(case.reference)
    refs = [i.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence]
    assert sorted(refs) == sorted(d.SOPInstanceUID for d in case.reference)
    stored = read_back_map(pm_path, [d.ImagePositionPatient for d in case.reference],
                           [d.SOPInstanceUID for d in case.reference])
    assert not np.isnan(stored).any()  # every slice is a frame
    inside = case.liver & np.isfinite(case.ecv_map)
    assert inside.sum() > 100
    # real-world value = stored x slope (%)
    np.testing.assert_allclose(stored[inside] * SLOPE, case.ecv_map[inside], rtol=0, atol=1e-3)
    assert np.all(stored[~inside] == ds.FloatPixelPaddingValue)


def test_map_frames_run_up_the_slice_normal_as_ohif_lays_out_its_volume(case, pm_path):
    # OHIF 3.12 draws map frame k on slice k of its volume, sorted by position along row x column
    # cosines, lowest first (issue 17): the frames must come in that order.
    ds = pydicom.dcmread(pm_path, stop_before_pixels=True)
    iop = np.asarray(case.reference[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    along = [float(np.dot(np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float), normal))
             for f in ds.PerFrameFunctionalGroupsSequence]
    assert along == sorted(along) and len(set(along)) == len(case.reference)
    positions = {d.SOPInstanceUID: tuple(map(float, d.ImagePositionPatient)) for d in case.reference}
    for f in ds.PerFrameFunctionalGroupsSequence:  # each frame still names the image it lies on
        uid = f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert positions[uid] == tuple(map(float, f.PlanePositionSequence[0].ImagePositionPatient))


def test_map_padding_lies_inside_the_declared_range_just_below_every_value(case, pm_path):
    ds = pydicom.dcmread(pm_path)
    rwvm = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    first, last = rwvm.DoubleFloatRealWorldValueFirstValueMapped, rwvm.DoubleFloatRealWorldValueLastValueMapped
    pad = ds.FloatPixelPaddingValue
    values = case.ecv_map[case.liver & np.isfinite(case.ecv_map)] / 100.0
    assert first == pytest.approx(pad) and first <= pad <= last
    assert pad < values.min() and pad < 0
    assert last == pytest.approx(values.max(), abs=1e-6)
    assert ds.FloatPixelPaddingRangeLimit == pad


def test_map_legend_and_window_explanation_are_one_value_each(pm_path):
    ds = pydicom.dcmread(pm_path)
    rwvm = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert rwvm.LUTLabel == LUT_LABEL == "ECV (%)"
    assert rwvm.RealWorldValueSlope == SLOPE and rwvm.RealWorldValueIntercept == 0
    voi = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    explanation = voi["WindowCenterWidthExplanation"]
    assert explanation.VM == 1 and explanation.value == "ECV 0-60 %"  # not one value per character
    assert float(voi.WindowCenter) == 0.30 and float(voi.WindowWidth) == 0.60


def test_map_declares_unit_quantity_padding_and_source_series(case, pm_path):
    ds = pydicom.dcmread(pm_path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert ds.FloatPixelPaddingValue < 0  # below every ECV; its place is tested above
    rwvm = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    unit = rwvm.MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("%", "UCUM")  # stored fraction x slope
    assert rwvm.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "ECV"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == case.reference[0].SeriesInstanceUID
    assert "research" in ds.SeriesDescription.lower()
    anatomy = ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
    assert anatomy.AnatomicRegionSequence[0].CodeValue == "10200004" and anatomy.FrameLaterality == "U"


def test_padding_is_one_point_below_the_lowest_value_or_zero():
    assert padding_for(0.25) == pytest.approx(-0.01)
    assert padding_for(-0.05) == pytest.approx(-0.06)
    assert padding_for(-0.05) == float(np.float32(padding_for(-0.05)))  # exactly what float32 pixels hold


def test_map_without_liver_values_is_refused(case):
    empty = np.full(Reference(case.reference).shape, np.nan, np.float32)
    with pytest.raises(ValueError, match="no finite value inside the liver mask"):
        t = load_template()
        build_ecv_map(Reference(case.reference), empty, case.liver, t.measurements["paper001.ecv_cect"].name,
                      t.roles["liver"].site, "2.25.1", "2.25.2", 1)


def test_slices_without_a_value_are_frames_of_padding(case, tmp_path):
    # A liver slice with no finite ECV in the middle: it is still a frame, all padding.
    ecv_map = case.ecv_map.copy()
    liver_slices = np.flatnonzero(case.liver.any(axis=(1, 2)))
    gap = int(liver_slices[len(liver_slices) // 2])
    ecv_map[gap] = np.nan
    t = load_template()
    ds = build_ecv_map(Reference(case.reference), ecv_map, case.liver, t.measurements["paper001.ecv_cect"].name,
                       t.roles["liver"].site, "2.25.1", "2.25.2", 1)
    assert int(ds.NumberOfFrames) == len(case.reference)
    path = tmp_path / "map.dcm"
    ds.save_as(path, enforce_file_format=True)
    got = read_back_map(path, [d.ImagePositionPatient for d in case.reference],
                        [d.SOPInstanceUID for d in case.reference])
    assert np.all(got[gap] == ds.FloatPixelPaddingValue)
    inside = case.liver & np.isfinite(ecv_map)
    np.testing.assert_allclose(got[inside] * SLOPE, ecv_map[inside], rtol=0, atol=1e-3)


def test_highdicom_reads_the_map_back_as_a_volume_on_the_reference(case, pm_path):
    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(pm_path))
    # stored values (highdicom 0.28.2 fails applying a float map's real world value mapping itself:
    # '_CombinedPixelTransform' has no 'input_dtype'), mapped here with the map's own slope
    volume = pm.get_volume(apply_real_world_transform=False)
    slope = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].RealWorldValueSlope
    assert volume.shape == (len(case.reference), *case.liver.shape[1:])
    inverse = np.linalg.inv(volume.affine)
    for k, d in enumerate(case.reference):
        s, r, c, _ = inverse @ np.r_[np.asarray(d.ImagePositionPatient, float), 1.0]
        assert abs(r) < 1e-3 and abs(c) < 1e-3
        inside = case.liver[k] & np.isfinite(case.ecv_map[k])
        np.testing.assert_allclose(volume.array[int(round(s))][inside] * slope, case.ecv_map[k][inside], atol=1e-3)


def test_map_written_to_a_buffer_is_the_file_written_to_disk(case, tmp_path):
    # The frames are appended after pydicom has written the header: to a path or to a buffer alike.
    t = load_template()
    ds = build_ecv_map(Reference(case.reference), case.ecv_map, case.liver, t.measurements["paper001.ecv_cect"].name,
                       t.roles["liver"].site, "2.25.1", "2.25.2", 1)
    path, buffer = tmp_path / "map.dcm", io.BytesIO()
    ds.save_as(path, enforce_file_format=True)
    ds.save_as(buffer, enforce_file_format=True)
    assert buffer.getvalue() == path.read_bytes()
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert len(back.FloatPixelData) == int(back.NumberOfFrames) * int(back.Rows) * int(back.Columns) * 4
