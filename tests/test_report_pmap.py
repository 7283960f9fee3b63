import numpy as np
import pydicom
import pytest
from report_support import dciodvfy, read_back_map, shared_case, shared_outputs

from hccnode.report import Reference
from hccnode.report.pmap import PADDING, build_ecv_map, masked_map
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


def test_map_values_equal_the_input_inside_the_liver_and_padding_elsewhere(case, pm_path):
    got = read_back_map(pm_path, [d.ImagePositionPatient for d in case.reference],
                        [d.SOPInstanceUID for d in case.reference])
    inside = case.liver & np.isfinite(case.ecv_map)
    assert inside.sum() > 100
    np.testing.assert_allclose(got[inside], case.ecv_map[inside], rtol=0, atol=1e-4)
    liver_slices = case.liver.any(axis=(1, 2))
    assert np.all(got[liver_slices][~inside[liver_slices]] == PADDING)
    assert np.all(np.isnan(got[~liver_slices]))  # slices without liver are not encoded at all


def test_map_declares_unit_quantity_padding_and_source_series(case, pm_path):
    ds = pydicom.dcmread(pm_path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert ds.FloatPixelPaddingValue == PADDING
    rwvm = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    unit = rwvm.MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("%", "UCUM")
    assert rwvm.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "ECV"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == case.reference[0].SeriesInstanceUID
    assert "research" in ds.SeriesDescription.lower()
    anatomy = ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
    assert anatomy.AnatomicRegionSequence[0].CodeValue == "10200004" and anatomy.FrameLaterality == "U"


def test_masked_map_keeps_only_finite_liver_voxels():
    values = np.array([[[10.0, np.nan, 30.0, 40.0]]], np.float32)
    liver = np.array([[[True, True, True, False]]])
    np.testing.assert_array_equal(masked_map(values, liver), [[[10.0, PADDING, 30.0, PADDING]]])


def test_map_without_liver_values_is_refused(case):
    empty = np.full(Reference(case.reference).shape, np.nan, np.float32)
    with pytest.raises(ValueError, match="no finite value inside the liver mask"):
        t = load_template()
        build_ecv_map(Reference(case.reference), empty, case.liver, t.measurements["paper001.ecv_cect"].name,
                      t.roles["liver"].site, "2.25.1", "2.25.2", 1)


def test_slices_without_a_value_are_left_out_between_others(case, tmp_path):
    # A liver slice with no finite ECV in the middle: the frames around it are not consecutive.
    ecv_map = case.ecv_map.copy()
    liver_slices = np.flatnonzero(case.liver.any(axis=(1, 2)))
    gap = int(liver_slices[len(liver_slices) // 2])
    ecv_map[gap] = np.nan
    t = load_template()
    ds = build_ecv_map(Reference(case.reference), ecv_map, case.liver, t.measurements["paper001.ecv_cect"].name,
                       t.roles["liver"].site, "2.25.1", "2.25.2", 1)
    assert int(ds.NumberOfFrames) == len(liver_slices) - 1
    path = tmp_path / "map.dcm"
    ds.save_as(path, enforce_file_format=True)
    got = read_back_map(path, [d.ImagePositionPatient for d in case.reference],
                        [d.SOPInstanceUID for d in case.reference])
    assert np.all(np.isnan(got[gap]))
    inside = case.liver & np.isfinite(ecv_map)
    np.testing.assert_allclose(got[inside], ecv_map[inside], rtol=0, atol=1e-4)
