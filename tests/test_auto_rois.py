"""Automatic ROIs (hccnode.imaging.auto_rois) on phantom DICOM, checked against the phantom's own
label map (hccnode.phantom.anatomy.label_slice evaluated at every voxel centre)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from hccnode.imaging import auto_rois as AR
from hccnode.imaging import ecv
from hccnode.imaging.anatomy import image_lps_order
from hccnode.imaging.measure import AUTOMATIC
from hccnode.imaging.volumes import Volume, read_series
from hccnode.phantom import Motion, StudySpec, generate
from hccnode.phantom.anatomy import Label, label_slice
from hccnode.phantom.generate import make_tumors
from hccnode.phantom.images import TABLE_Z_MM

VESSELS = (Label.AORTA, Label.PORTAL_VEIN, Label.HEPATIC_VEIN)


class Phantom:
    def __init__(self, spec: StudySpec, out: Path):
        self.spec = spec
        self.out = out
        self.truth = generate(spec, out)

    def volume(self, kind: str, study: int = 0):
        s = self.truth.series(kind, study=study)[0]
        return read_series(sorted((self.out / s["folder"]).glob("*.dcm")))

    def labels(self, kind: str, vol, study: int = 0) -> np.ndarray:
        """True label of every voxel of an axial volume read from this phantom ([k, j, i])."""
        s = self.truth.series(kind, study=study)[0]
        m = s.get("motion")
        motion = Motion(tuple(m["shift_mm"]), m["rotation_deg"]) if m else None
        factor = self.spec.followup_diameter_factor if study == 1 else 1.0
        tumors = make_tumors(self.spec, factor)
        img = vol.image
        nx, ny, nz = img.GetSize()
        d = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
        jj, ii = np.mgrid[:ny, :nx]
        out = np.zeros((nz, ny, nx), np.uint8)
        for k in range(nz):
            p = np.asarray(img.GetOrigin())[:, None, None] + np.tensordot(d, np.stack([ii, jj, np.full_like(ii, k)]), 1)
            assert np.ptp(p[2]) < 1e-6, "axial volumes only"
            out[k] = label_slice(p[0], p[1], float(p[2, 0, 0]) - TABLE_Z_MM, tumors, self.spec.vessels, motion)
        return out


def _phantom(tmp_path_factory, name: str, **kw) -> Phantom:
    return Phantom(StudySpec(**kw), tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module")
def cect(tmp_path_factory):
    return _phantom(tmp_path_factory, "cect", kind="cect", seed=5, slices=12, matrix=160)


def _lps(vol, arr):
    """An array on the volume's grid in LPS order, with (dz, dy, dx)."""
    order = image_lps_order(vol.image)
    return order.apply(arr), order.spacing(vol.image.GetSpacing()[::-1])


def _inplane_distance(mask_lps, spacing) -> np.ndarray:
    """Per voxel: in-plane distance (mm) to the nearest voxel of `mask_lps` on the same slice."""
    out = np.full(mask_lps.shape, np.inf)
    for k in range(mask_lps.shape[0]):
        if mask_lps[k].any():
            out[k] = ndimage.distance_transform_edt(~mask_lps[k], sampling=spacing[1:])
    return out


def check_ct(placement: AR.Placement, vol, labels: np.ndarray, min_area=85.0, max_area=115.0) -> dict:
    """The checks every CT placement must pass; returns ROI centres (patient x, y mm) by label."""
    lab, spacing = _lps(vol, labels)
    _, dy, dx = spacing
    got = {r.ref.label: r for r in placement.rois}
    assert sorted(got) == sorted(AR.LIVER_LABELS + ("aorta", "erector spinae")), placement.notes
    assert {r.ref.label: r.role for r in placement.rois} == {
        "liver right anterior": "liver", "liver right posterior": "liver", "liver left lateral": "liver",
        "aorta": "aorta", "erector spinae": "muscle"}
    avoid = np.isin(lab, VESSELS) | (lab >= Label.TUMOR)
    to_avoid = _inplane_distance(avoid, spacing)
    outside_liver = _inplane_distance(~np.isin(lab, (Label.LIVER, Label.PORTAL_VEIN, Label.HEPATIC_VEIN))
                                      & (lab < Label.TUMOR), spacing)
    outside_aorta = _inplane_distance(lab != Label.AORTA, spacing)
    centres, slices = {}, {}
    for label, roi in got.items():
        assert roi.ref.source == AUTOMATIC and roi.ref.name == roi.role
        assert roi.mask.GetPixelID() == sitk.sitkUInt8 and roi.mask.GetSize() == vol.image.GetSize()
        assert roi.mask.GetOrigin() == vol.image.GetOrigin() and roi.mask.GetDirection() == vol.image.GetDirection()
        m, _ = _lps(vol, sitk.GetArrayFromImage(roi.mask) > 0)
        planes = np.nonzero(m.any(axis=(1, 2)))[0]
        slices[label] = set(planes.tolist())
        area = m.sum() / len(planes) * dy * dx
        z, y, x = np.nonzero(m)
        centres[label] = (x.mean() * dx, y.mean() * dy)
        if roi.role == "liver":
            assert (lab[m] == Label.LIVER).all(), (label, np.unique(lab[m]))
            assert to_avoid[m].min() >= 3.0, (label, "near a vessel or tumor", to_avoid[m].min())
            assert outside_liver[m].min() >= 3.0, (label, "near the liver edge", outside_liver[m].min())
            assert min_area <= area <= max_area, (label, area)
            assert len(planes) >= 2
        elif roi.role == "aorta":
            assert (lab[m] == Label.AORTA).all(), np.unique(lab[m])
            assert outside_aorta[m].min() >= 2.0      # well inside the lumen
            assert min_area <= area <= max_area, area
        else:
            assert (lab[m] == Label.ERECTOR_SPINAE).all(), np.unique(lab[m])
    # Anatomy: right anterior in front of right posterior, left lateral to the left of both.
    ra, rp, ll = (centres[k] for k in AR.LIVER_LABELS)
    assert ra[1] < rp[1] - 20 and ll[0] > max(ra[0], rp[0]) + 30, centres
    # Paper 001: the aorta at the same level as the liver ROIs.
    assert slices["aorta"] & slices["liver right anterior"]
    return centres


@pytest.mark.parametrize("kind", ["ct_portal", "ct_equilibrium"])
def test_ct_rois_land_in_their_organs(cect, kind):
    vol = cect.volume(kind)
    placement = AR.place_ct_rois(vol)
    check_ct(placement, vol, cect.labels(kind, vol))
    assert placement.notes == []


@pytest.mark.parametrize("vendor,enhanced", [("ge", False), ("philips", False), ("canon", False), ("standard", True)])
def test_vendor_styles(tmp_path_factory, vendor, enhanced):
    p = _phantom(tmp_path_factory, f"vendor-{vendor}", kind="cect", vendor=vendor, enhanced=enhanced, seed=11,
                 slices=8, matrix=128)
    vol = p.volume("ct_equilibrium")
    check_ct(AR.place_ct_rois(vol), vol, p.labels("ct_equilibrium", vol), min_area=80.0, max_area=120.0)


def test_misregistered_phase(tmp_path_factory):
    p = _phantom(tmp_path_factory, "motion", kind="cect", seed=7, slices=10, matrix=128,
                 motion={"equilibrium": Motion(shift_mm=(8.0, -6.0, 5.0), rotation_deg=5.0)})
    vol = p.volume("ct_equilibrium")
    moved = check_ct(AR.place_ct_rois(vol), vol, p.labels("ct_equilibrium", vol), min_area=80.0, max_area=120.0)
    still = p.volume("ct_portal")
    unmoved = check_ct(AR.place_ct_rois(still), still, p.labels("ct_portal", still), min_area=80.0, max_area=120.0)
    # the aorta ROI followed the anatomy
    shift = np.subtract(moved["aorta"], unmoved["aorta"])
    assert np.hypot(*shift) > 5.0


def reoriented(vol, axes, flips):
    """The same volume stored in another array order: axes permuted (array axes), some reversed;
    direction and origin set so every voxel keeps its patient position."""
    img = vol.image
    arr = sitk.GetArrayFromImage(img)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    sp = np.asarray(img.GetSpacing())
    new = np.transpose(arr, axes)
    for a, f in enumerate(flips):
        if f:
            new = np.flip(new, a)
    out = sitk.GetImageFromArray(np.ascontiguousarray(new))
    dirs = [d[:, 2 - axes[a]] * (-1.0 if flips[a] else 1.0) for a in range(3)]
    out.SetDirection(np.column_stack([dirs[2 - j] for j in range(3)]).ravel().tolist())
    out.SetSpacing([float(sp[2 - axes[2 - j]]) for j in range(3)])
    first = [0, 0, 0]
    for a, f in enumerate(flips):
        if f:
            first[axes[a]] = arr.shape[axes[a]] - 1
    out.SetOrigin(img.TransformIndexToPhysicalPoint([first[2], first[1], first[0]]))
    return dataclasses.replace(vol, image=out), (axes, flips)


def _reorient_array(arr, how):
    axes, flips = how
    new = np.transpose(arr, axes)
    for a, f in enumerate(flips):
        if f:
            new = np.flip(new, a)
    return new


@pytest.mark.parametrize("axes,flips", [
    ((0, 1, 2), (False, True, True)),     # rows and columns reversed (prone-style display)
    ((0, 2, 1), (False, False, True)),    # rows and columns swapped
    ((1, 0, 2), (False, True, False)),    # stored as coronal planes, feet first
])
def test_other_storage_orientations(cect, axes, flips):
    vol = cect.volume("ct_equilibrium")
    labels = cect.labels("ct_equilibrium", vol)
    other, how = reoriented(vol, axes, flips)
    # the helper keeps patient positions: resampling back onto the original grid is exact
    back = sitk.Resample(other.image, vol.image, sitk.Transform(), sitk.sitkNearestNeighbor, -2000.0)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(vol.image))
    placement = AR.place_ct_rois(other)
    check_ct(placement, other, _reorient_array(labels, how))
    # and the ROIs are where they are on the original storage order
    original = {r.ref.label: sitk.GetArrayFromImage(r.mask) for r in AR.place_ct_rois(vol).rois}
    for r in placement.rois:
        on_original = sitk.Resample(r.mask, vol.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        a, b = sitk.GetArrayFromImage(on_original) > 0, original[r.ref.label] > 0
        assert (a & b).sum() >= 0.8 * b.sum(), r.ref.label


def test_avoid_mask_is_never_touched(cect):
    vol = cect.volume("ct_equilibrium")
    labels = cect.labels("ct_equilibrium", vol)
    first = {r.ref.label: sitk.GetArrayFromImage(r.mask) > 0 for r in AR.place_ct_rois(vol).rois}
    # The reader's tumor plus a region over the first right anterior ROI, grown by 10 mm.
    block = ndimage.binary_dilation(first["liver right anterior"], iterations=5)
    avoid_arr = ((labels >= Label.TUMOR) | block).astype(np.uint8)
    avoid = sitk.GetImageFromArray(avoid_arr)
    avoid.CopyInformation(vol.image)
    placement = AR.place_ct_rois(vol, avoid=avoid)
    check_ct(placement, vol, labels)
    for r in placement.rois:
        assert not (sitk.GetArrayFromImage(r.mask) & avoid_arr).any(), r.ref.label
    moved = sitk.GetArrayFromImage(next(r.mask for r in placement.rois if r.ref.label == "liver right anterior")) > 0
    assert not (moved & first["liver right anterior"]).any()
    # an avoid mask on another grid (half resolution) is resampled onto the volume
    coarse = sitk.Resample(avoid, [s // 2 for s in vol.image.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           vol.image.GetOrigin(), [s * 2 for s in vol.image.GetSpacing()], vol.image.GetDirection())
    again = AR.place_ct_rois(vol, avoid=coarse)
    on_grid = sitk.GetArrayFromImage(sitk.Resample(coarse, vol.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    for r in again.rois:
        assert not (sitk.GetArrayFromImage(r.mask) & on_grid).any(), r.ref.label


def test_hypoattenuating_lesions_avoided_without_a_reader(tmp_path_factory):
    # Four wash-out tumors, two of them where the right lobe ROIs would otherwise go; no avoid mask.
    p = _phantom(tmp_path_factory, "lesions", kind="cect", seed=9, slices=12, matrix=160,
                 tumor_diameters_mm=(30.0, 30.0, 24.0, 30.0), tumor_portal_fill=0.1)
    vol = p.volume("ct_portal")
    labels = p.labels("ct_portal", vol)
    lab, spacing = _lps(vol, labels)
    near_tumor = _inplane_distance(lab >= Label.TUMOR, spacing)
    placement = AR.place_ct_rois(vol)
    livers = [r for r in placement.rois if r.role == "liver"]
    assert livers, placement.notes
    for r in livers:
        m, _ = _lps(vol, sitk.GetArrayFromImage(r.mask) > 0)
        assert (lab[m] == Label.LIVER).all() and near_tumor[m].min() >= 3.0, r.ref.label
    # every liver label is either placed or explained
    placed = {r.ref.label for r in livers}
    for label in set(AR.LIVER_LABELS) - placed:
        assert any(n.startswith(label) for n in placement.notes)


def test_cect_liver_ecv_from_automatic_rois(tmp_path_factory):
    """Paper 001's liver ECV from automatic aorta and liver ROIs (placed on the equilibrium phase,
    read on the aligned unenhanced one) is within 0.5 percentage points of the truth at the
    phantom's default noise (10 HU). Size: at 160 x 160 with 5 mm slices the ROIs hold too few
    voxels (over 14 seeds the error's RMS was 0.8 pp, max 1.5), so this uses 384 x 384 with
    1.5 mm slices (paper 001's slice thickness): over 14 seeds RMS 0.16 pp, max 0.30."""
    p = _phantom(tmp_path_factory, "ecv", kind="cect", seed=2, slices=20, matrix=384, slice_thickness_mm=1.5)
    assert p.spec.noise_sd == StudySpec().noise_sd
    eq, un = p.volume("ct_equilibrium"), p.volume("ct_unenhanced")
    placement = AR.place_ct_rois(eq)
    e, u = sitk.GetArrayFromImage(eq.image), sitk.GetArrayFromImage(un.image)
    livers = [sitk.GetArrayFromImage(r.mask) > 0 for r in placement.rois if r.role == "liver"]
    aorta = next(sitk.GetArrayFromImage(r.mask) > 0 for r in placement.rois if r.role == "aorta")
    assert len(livers) == 3
    liver_d = np.mean([e[m].mean() for m in livers]) - np.mean([u[m].mean() for m in livers])
    got = ecv.ecv_cect_percent(liver_d, e[aorta].mean() - u[aorta].mean(), p.truth.data["hct"])
    assert abs(got - 100 * p.truth.roi("liver")["ecv"]) <= 0.5, got


@pytest.mark.parametrize("vendor", ["siemens", "ge"])
def test_mr_t2_erector_spinae(tmp_path_factory, vendor):
    p = _phantom(tmp_path_factory, f"mr-{vendor}", kind="mr", vendor=vendor, seed=4, slices=8, matrix=128)
    for study in (0, 1):
        vol = p.volume("mr_t2", study=study)
        placement = AR.place_mr_muscle(vol)
        assert placement.notes == []
        (roi,) = placement.rois
        assert roi.role == "muscle" and roi.ref.label == "erector spinae" and roi.ref.source == AUTOMATIC
        labels = p.labels("mr_t2", vol, study=study)
        m = sitk.GetArrayFromImage(roi.mask) > 0
        assert (labels[m] == Label.ERECTOR_SPINAE).all()
        planes = np.nonzero(m.any(axis=(1, 2)))[0]
        assert len(planes) == vol.image.GetSize()[2]          # found on every slice
        dx, dy = vol.image.GetSpacing()[:2]
        assert 80.0 <= m.sum() / len(planes) * dx * dy <= 120.0
        # the muscle's T2 signal, as paper 003 reads it
        t2 = sitk.GetArrayFromImage(vol.image)
        assert t2[m].mean() == pytest.approx(p.truth.roi("erector_spinae", study)["t2_signal"], rel=0.03)


def test_mr_muscle_on_flipped_storage(tmp_path_factory):
    p = _phantom(tmp_path_factory, "mr-flip", kind="mr", seed=6, slices=6, matrix=128)
    vol = p.volume("mr_t2")
    labels = p.labels("mr_t2", vol)
    other, how = reoriented(vol, (0, 2, 1), (True, True, False))
    (roi,) = AR.place_mr_muscle(other).rois
    m = sitk.GetArrayFromImage(roi.mask) > 0
    assert m.any() and (_reorient_array(labels, how)[m] == Label.ERECTOR_SPINAE).all()


def _volume(arr: np.ndarray, spacing=(2.0, 2.0, 5.0), modality="CT", rescale_type=None, direction=None):
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing(spacing)
    if direction is not None:
        img.SetDirection(direction)
    return Volume(image=img, series_uid="1.2.3", series_number=7, frame_of_reference_uid=None,
                     sop_instance_uids=[""] * arr.shape[0], frame_numbers=[None] * arr.shape[0],
                     modality=modality, rescale_type=rescale_type)


def test_what_cannot_be_placed_is_noted_not_raised(cect):
    # A water cylinder: a body, but no spine, aorta, liver or muscle.
    yy, xx = np.mgrid[:96, :96]
    phantom = np.where((yy - 48) ** 2 + (xx - 48) ** 2 < 40 ** 2, 0.0, -1000.0)
    water = _volume(np.repeat(phantom[None], 6, axis=0))
    placement = AR.place_ct_rois(water)
    assert placement.rois == []
    text = " ".join(placement.notes)
    for what in ("aorta not placed", "liver ROIs not placed", "erector spinae not placed"):
        assert what in text, placement.notes
    # only air: nothing at all
    assert AR.place_ct_rois(_volume(np.full((3, 32, 32), -1000.0))).notes
    assert AR.place_mr_muscle(_volume(np.zeros((3, 32, 32)), modality="MR")).notes
    # an unenhanced phase: liver and muscle placed, the aorta explained
    un = cect.volume("ct_unenhanced")
    placement = AR.place_ct_rois(un)
    assert not [r for r in placement.rois if r.role == "aorta"]
    assert any("aorta not placed" in n and "enhanced" in n for n in placement.notes)
    assert len([r for r in placement.rois if r.role == "liver"]) >= 2


def test_unusable_input_raises(cect):
    mr = _volume(np.zeros((3, 32, 32)), modality="MR")
    with pytest.raises(ValueError, match="CT series"):
        AR.place_ct_rois(mr)
    with pytest.raises(ValueError, match="MR series"):
        AR.place_mr_muscle(_volume(np.zeros((3, 32, 32))))
    with pytest.raises(ValueError, match="not HU"):
        AR.place_ct_rois(_volume(np.zeros((3, 32, 32)), rescale_type="MGML"))
    # double oblique: 60 degrees about (1, 1, 1); no array axis within 45 degrees of a patient axis
    oblique = sitk.VersorTransform((1.0, 1.0, 1.0), np.pi / 3).GetMatrix()
    with pytest.raises(ValueError, match="oblique"):
        AR.place_ct_rois(_volume(np.zeros((3, 32, 32)), direction=oblique))
    with pytest.raises(ValueError, match="3-D"):
        AR.place_ct_rois(dataclasses.replace(mr, image=sitk.Image(8, 8, sitk.sitkFloat32), modality="CT"))


def test_erector_spinae_merged_with_neighbouring_muscles():
    # 1 mm pixels, LPS slice; no fat plane between each erector spinae and a big lateral back
    # muscle that lies mostly outside the paraspinal window: the ROI is in an erector spinae.
    y, x = np.mgrid[-150:151, -200:201].astype(float)
    def ell(cx, cy, rx, ry):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
    body = ell(0, 0, 190, 140)
    erector = ell(-40, 80, 22, 16) | ell(40, 80, 22, 16)
    tissue = erector | ell(-115, 55, 35, 25) | ell(115, 55, 35, 25)
    tissue |= (np.abs(y - 72) < 6) & (np.abs(x) > 50) & (np.abs(x) < 90)        # the bridges
    found = AR.erector_spinae(tissue, body, x_mid=200.0, spacing2=(1.0, 1.0))
    assert found is not None
    cy, cx, radius = found
    assert erector[cy, cx] and radius == pytest.approx(AR.ROI_RADIUS_MM)


def test_reduced_search_grid_covers_every_slice_and_voxel():
    grid = AR._Reduced((10, 9, 9), (1.25, 0.7, 0.7))        # 4 slices per search slice, 2 x 2 blocks
    assert (grid.zstep, grid.f) == (4, 2) and grid.spacing == (5.0, 1.4, 1.4)
    covered = [k for kc in range(len(range(0, 10, grid.zstep))) for k in grid.fine_slices(kc)]
    assert covered == list(range(10))                      # each slice stands for exactly once
    mask = np.zeros((10, 9, 9), bool)
    mask[5, 3, 6] = True                                    # a voxel off the search slices' centres
    reduced = grid.reduce_mask(mask)
    assert reduced.shape == (3, 4, 4) and reduced.sum() == 1 and reduced[1, 1, 3]
    hu = np.arange(10 * 9 * 9, dtype=np.float32).reshape(10, 9, 9)
    # each search voxel is the mean of the voxels it stands for (noise drops by sqrt of their number)
    for kc in range(3):
        r = grid.fine_slices(kc)
        assert grid.reduce(hu)[kc, 1, 2] == pytest.approx(hu[r.start:r.stop, 2:4, 4:6].mean())
    assert grid.fine_centre(1, 3) == (2, 6) or grid.fine_centre(1, 3) == (3, 7)


@pytest.mark.parametrize("dz", [0.6, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0])
def test_z_guard_covers_the_margin_beyond_a_rois_slices(dz):
    # Every fine slice within the clearance of a ROI's painted slices lies between checked search
    # slices, so the 3-D clearance is known (the guard's worked formula against brute force).
    grid = AR._Reduced((200, 8, 8), (dz, 1.0, 1.0))
    guard = AR.z_guard(AR.LIVER_MARGIN_MM, dz, grid.zstep)
    lo, hi = 10, 13                                        # the ROI's search slices
    painted = [k for kc in range(lo, hi + 1) for k in grid.fine_slices(kc)]
    known = range((lo - guard) * grid.zstep, (hi + guard) * grid.zstep + 1)
    near = [j for j in range(200) if min(abs(j - k) for k in painted) * dz < AR.LIVER_MARGIN_MM]
    assert set(near) <= set(known), (dz, grid.zstep, guard)
    # and no more than one search slice of surplus
    assert guard == 0 or not set(near) <= set(range((lo - guard + 1) * grid.zstep, (hi + guard - 1) * grid.zstep + 1))
