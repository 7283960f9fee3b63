import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import JPEG2000Lossless, RLELossless

from hccnode.imaging.volumes import SeriesError, read_series, volume_from_datasets
from synth_dicom import ct_series, enhanced_ct


def _ramp(shape=(6, 8, 10)):
    z, y, x = np.indices(shape)
    return (100 * z + 10 * y + x - 300).astype(float)


def test_single_frame_sorted_by_position_not_instance_number():
    hu = _ramp()
    slices = ct_series(hu, spacing=(2.5, 0.7, 0.7), origin=(-10.0, 20.0, 30.0))
    rng = np.random.default_rng(0)
    vol = volume_from_datasets([slices[i] for i in rng.permutation(len(slices))])
    arr = sitk.GetArrayFromImage(vol.image)
    assert np.array_equal(arr, hu)
    assert vol.image.GetSpacing() == pytest.approx((0.7, 0.7, 2.5))
    assert vol.image.GetOrigin() == pytest.approx((-10.0, 20.0, 30.0))
    assert vol.sop_instance_uids == [s.SOPInstanceUID for s in slices]
    # the physical point of voxel (x=3, y=2, z=4) is origin + index * spacing
    assert vol.image.TransformIndexToPhysicalPoint((3, 2, 4)) == pytest.approx((-10 + 2.1, 20 + 1.4, 30 + 10.0))


def test_rescale_slope_intercept_applied_per_slice():
    hu = _ramp()
    a = ct_series(hu[:3], slope=1.0, intercept=-1024.0)
    b = ct_series(hu[3:], slope=0.5, intercept=-2000.0, series_uid=a[0].SeriesInstanceUID,
                  for_uid=a[0].FrameOfReferenceUID, origin=(0.0, 0.0, 6.0))
    vol = volume_from_datasets(a + b)
    assert np.allclose(sitk.GetArrayFromImage(vol.image), hu)


def test_sagittal_orientation_direction_and_origin():
    hu = _ramp()
    # row direction = anterior->posterior (+y), column = head->feet (-z); normal = +y x -z = -x
    ori = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    slices = ct_series(hu, spacing=(3.0, 1.0, 1.0), origin=(50.0, 0.0, 0.0), orientation=ori)
    vol = volume_from_datasets(slices)
    # slices written at x = 50, 47, ... 35 lie ascending along the normal (-x): x = 50 first
    assert vol.image.GetOrigin() == pytest.approx((50.0, 0.0, 0.0))
    assert vol.image.GetDirection() == pytest.approx((0, 0, -1, 1, 0, 0, 0, -1, 0))
    assert np.array_equal(sitk.GetArrayFromImage(vol.image), hu)
    assert vol.image.TransformIndexToPhysicalPoint((2, 3, 5)) == pytest.approx((35.0, 2.0, -3.0))


def test_enhanced_multiframe_per_frame_rescale_and_shuffled_frames():
    hu = _ramp()
    ds = enhanced_ct(hu, spacing=(1.5, 0.8, 0.8), slopes=[1, 1, 2, 2, 1, 1],
                     intercepts=[-1024, -1000, -1024, -3000, -1024, -1024], frame_order=[3, 0, 5, 1, 4, 2])
    vol = volume_from_datasets([ds])
    # slope 2 stores odd HU values rounded: within one stored step (2 HU)
    assert np.allclose(sitk.GetArrayFromImage(vol.image), hu, atol=1.0)
    assert np.array_equal(sitk.GetArrayFromImage(vol.image)[[0, 1, 4, 5]], hu[[0, 1, 4, 5]])
    assert vol.image.GetSpacing() == pytest.approx((0.8, 0.8, 1.5))
    assert vol.frame_numbers == [2, 4, 6, 1, 5, 3]


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_decodes(tmp_path, syntax):
    hu = _ramp((4, 64, 64))
    paths = []
    for i, ds in enumerate(ct_series(hu)):
        ds.compress(syntax)
        p = tmp_path / f"{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    vol = read_series(paths)
    assert np.array_equal(sitk.GetArrayFromImage(vol.image), hu)


@pytest.mark.parametrize("syntax", [None, RLELossless])
def test_deferred_headers_give_the_volume_and_stay_headers(tmp_path, syntax):
    """read_series with the headers classification read (pixel data deferred): the same volume as
    reading the files, and the headers still hold no pixel data afterwards (uncompressed data is
    read at its file offset, compressed data decoded from the file)."""
    hu = _ramp((4, 64, 64))
    paths = []
    for i, ds in enumerate(ct_series(hu)):
        if syntax:
            ds.compress(syntax)
        p = tmp_path / f"{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    headers = [pydicom.dcmread(p, defer_size=256) for p in paths]
    vol = read_series(paths, headers)
    assert np.array_equal(sitk.GetArrayFromImage(vol.image), hu)
    for h in headers:
        raw = h.get_item(0x7FE00010, keep_deferred=True)
        assert raw.value is None and raw.value_tell > 0  # still deferred: nothing loaded into the header


def test_missing_slice_named():
    slices = ct_series(_ramp((8, 4, 4)))
    del slices[3]
    with pytest.raises(SeriesError) as e:
        volume_from_datasets(slices)
    msg = str(e.value)
    assert slices[0].SeriesInstanceUID in msg and "series 3" in msg
    assert "missing slices" in msg and "1 slice(s) missing" in msg


def test_mixed_spacing_named():
    slices = ct_series(_ramp((8, 4, 4)), spacing=(2.0, 1, 1))
    for ds in slices[5:]:
        ds.ImagePositionPatient[2] += 0.7
    with pytest.raises(SeriesError, match="inconsistent slice spacing"):
        volume_from_datasets(slices)


@pytest.mark.parametrize("problem,edit", [
    ("mixed orientations", lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.9950042, -0.0998334])),
    ("mixed matrix sizes", lambda ds: (setattr(ds, "Rows", 2), setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]))),
    ("mixed pixel spacing", lambda ds: setattr(ds, "PixelSpacing", [0.9, 0.9])),
    ("Image Position", lambda ds: delattr(ds, "ImagePositionPatient")),
])
def test_inconsistent_series_refused(problem, edit):
    slices = ct_series(_ramp((5, 4, 4)))
    edit(slices[2])
    with pytest.raises(SeriesError, match=problem):
        volume_from_datasets(slices)


def test_duplicate_positions_and_shear_refused():
    slices = ct_series(_ramp((5, 4, 4)))
    with pytest.raises(SeriesError, match="duplicate slice position"):
        volume_from_datasets(slices + [ct_series(_ramp((1, 4, 4)), series_uid=slices[0].SeriesInstanceUID,
                                                 for_uid=slices[0].FrameOfReferenceUID)[0]])
    for k, ds in enumerate(slices):  # gantry tilt: y origin drifts 0.5 mm per slice
        ds.ImagePositionPatient[1] = 0.5 * k
    with pytest.raises(SeriesError, match="not stacked along the slice normal"):
        volume_from_datasets(slices)


def test_mixed_series_refused_and_unreadable_file_named(tmp_path):
    a, b = ct_series(_ramp((2, 4, 4))), ct_series(_ramp((2, 4, 4)))
    with pytest.raises(SeriesError, match="different series"):
        volume_from_datasets(a + b)
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not dicom")
    with pytest.raises(SeriesError, match="broken.dcm"):
        read_series([bad])


def test_truncated_pixel_data_named():
    slices = ct_series(_ramp((3, 4, 4)))
    slices[1].PixelData = slices[1].PixelData[:10]
    with pytest.raises(SeriesError, match=f"cannot decode pixel data of {slices[1].SOPInstanceUID}"):
        volume_from_datasets(slices)


@settings(max_examples=25, deadline=None)
@given(
    angles=st.tuples(*[st.floats(-np.pi, np.pi) for _ in range(3)]),
    spacing=st.tuples(st.floats(0.5, 5.0), st.floats(0.3, 2.0), st.floats(0.3, 2.0)),
    origin=st.tuples(*[st.floats(-300, 300) for _ in range(3)]),
    seed=st.integers(0, 10_000),
)
def test_any_orientation_and_order_gives_consistent_geometry(angles, spacing, origin, seed):
    # random orthonormal orientation, spacing and file order: every voxel's physical point must be
    # the slice's Image Position + column/row offsets along the written direction cosines
    r = sitk.Euler3DTransform()
    r.SetRotation(*angles)
    m = np.array(r.GetMatrix()).reshape(3, 3)
    orientation = tuple(float(v) for v in np.concatenate([m[:, 0], m[:, 1]]))
    hu = _ramp((4, 3, 5))
    slices = ct_series(hu, spacing=spacing, origin=origin, orientation=orientation)
    order = np.random.default_rng(seed).permutation(len(slices))
    vol = volume_from_datasets([slices[i] for i in order])
    assert np.array_equal(sitk.GetArrayFromImage(vol.image), hu)
    for k, ds in enumerate(slices):
        for j, i in ((0, 0), (2, 4)):
            want = np.asarray(ds.ImagePositionPatient) + i * spacing[2] * m[:, 0] + j * spacing[1] * m[:, 1]
            got = vol.image.TransformIndexToPhysicalPoint((i, j, k))
            assert np.allclose(got, want, atol=1e-3)


def test_rescale_type_kept_and_mixed_refused():
    slices = ct_series(_ramp((3, 4, 4)))
    for ds in slices:
        ds.RescaleType = "HU"
    assert volume_from_datasets(slices).rescale_type == "HU"
    slices[1].RescaleType = "US"
    with pytest.raises(SeriesError, match="mixed Rescale Type"):
        volume_from_datasets(slices)
