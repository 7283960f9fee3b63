import numpy as np
import pytest
import SimpleITK as sitk

from hccnode.imaging import ecv, registration

SPACING = (2.0, 2.0, 2.5)  # x, y, z mm
SIZE = (72, 64, 40)  # x, y, z voxels


def _phase(enhanced: bool):
    """Small abdominal-like volume (HU): body ellipse, liver, tumor, spine, aorta, a kidney.
    Equilibrium: liver +70 HU (ECV 28 % at HCT 0.4, aortic dHU 150), tumor +100 (40 %), aorta +150."""
    z, y, x = np.indices(SIZE[::-1]).astype(float)
    z *= SPACING[2]
    y *= SPACING[1]
    x *= SPACING[0]
    arr = np.full(SIZE[::-1], -1000.0)
    widen = 1 + 0.15 * np.sin(z / 30)  # the body outline changes along z, as an abdomen does
    body = ((x - 72) / (55 * widen)) ** 2 + ((y - 64) / 48) ** 2 <= 1
    arr[body] = -80  # fat
    arr[((x - 72) / (45 * widen)) ** 2 + ((y - 64) / 40) ** 2 <= 1] = 40  # muscle / soft tissue
    liver = ((x - 45) / 30) ** 2 + ((y - 55) / 24) ** 2 + ((z - 50) / 35) ** 2 <= 1
    tumor = ((x - 40) / 10) ** 2 + ((y - 50) / 9) ** 2 + ((z - 55) / 10) ** 2 <= 1
    spine = ((x - 75) / 10) ** 2 + ((y - 95) / 10) ** 2 <= 1
    aorta = ((x - 88 + z / 10) / 7) ** 2 + ((y - 80) / 7) ** 2 <= 1
    kidney = ((x - 110) / 12) ** 2 + ((y - 85) / 8) ** 2 + ((z - 45) / 20) ** 2 <= 1
    arr[liver] = 55
    arr[tumor] = 40
    arr[spine] = np.where(np.sin(z / 5) > -0.3, 450, 80)[spine]  # vertebrae and discs
    arr[aorta] = 40
    arr[kidney] = 30
    if enhanced:
        arr[liver & ~tumor] += 70
        arr[tumor] += 100
        arr[aorta] += 150
        arr[kidney] += 120
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing(SPACING)
    img.SetOrigin((-100.0, -80.0, 20.0))
    return img, liver & ~tumor, tumor, aorta


def _misalign(img, tx):
    return sitk.Resample(img, img, tx, sitk.sitkLinear, -1000.0)


def _truth():
    # moving(p) = fixed(T(p)): a 3 deg rotation about z and a 5 mm shift (3, 4, 0 mm)
    t = sitk.Euler3DTransform()
    t.SetCenter(registration._centre(_phase(False)[0]))
    t.SetRotation(0.0, 0.0, np.radians(3.0))
    t.SetTranslation((3.0, 4.0, 0.0))
    return t


def _residual_mm(found, truth, img, mask):
    # registration gives R with fixed(p) ~ moving(R(p)) = fixed(T(R(p))): want T(R(p)) = p
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[::97]
    worst = 0.0
    for k, j, i in idx:
        p = img.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        q = truth.TransformPoint(found.TransformPoint(p))
        worst = max(worst, float(np.linalg.norm(np.subtract(q, p))))
    return worst


@pytest.fixture(scope="module")
def registered():
    fixed, liver, tumor, aorta = _phase(False)
    moving = _misalign(_phase(True)[0], _truth())
    return fixed, moving, liver, tumor, aorta, registration.register(fixed, moving)


def test_recovers_5mm_3deg_within_one_voxel(registered):
    fixed, moving, liver, tumor, aorta, reg = registered
    body = sitk.GetImageFromArray((sitk.GetArrayFromImage(fixed) > -500).astype(np.uint8))
    body.CopyInformation(fixed)
    assert _residual_mm(reg.transform, _truth(), fixed, body) < min(SPACING)
    q = reg.quality
    assert q.ok, q.problems
    assert q.ncc_after > q.ncc_before
    assert 2.0 < q.rotation_deg < 4.0


def test_ecv_after_registration_within_1pp(registered):
    fixed, moving, liver, tumor, aorta, reg = registered
    eq = sitk.GetArrayFromImage(reg.resampled)
    un = sitk.GetArrayFromImage(fixed)
    # ROIs inside the structures, as the papers place them (away from edges)
    from scipy import ndimage

    def roi(m):
        return ndimage.binary_erosion(m, iterations=2)

    d_aorta = eq[roi(aorta)].mean() - un[roi(aorta)].mean()
    for mask, truth in ((liver, 28.0), (tumor, 40.0)):
        r = ecv.cect_ecv(un[roi(mask)].mean(), eq[roi(mask)].mean(), 0.0, d_aorta, hct=0.40)
        assert abs(r.ecv_percent - truth) <= 1.0, (truth, r)
    # and without registration the same ROIs are measurably off (the test can fail)
    raw = sitk.GetArrayFromImage(moving)
    r = ecv.cect_ecv(un[roi(tumor)].mean(), raw[roi(tumor)].mean(), 0.0,
                     raw[roi(aorta)].mean() - un[roi(aorta)].mean(), hct=0.40)
    assert abs(r.ecv_percent - 40.0) > 1.0


def test_unrelated_image_is_flagged():
    fixed = _phase(False)[0]
    rng = np.random.default_rng(0)
    noise = sitk.GetImageFromArray(rng.normal(0, 100, SIZE[::-1]).astype(np.float32))
    noise.CopyInformation(fixed)
    q = registration.register(fixed, noise).quality
    assert not q.ok and q.problems


def test_ncc_basics():
    a = np.arange(10.0)
    assert registration.ncc(a, 2 * a + 1) == pytest.approx(1.0)
    assert registration.ncc(a, -a) == pytest.approx(-1.0)
    b = a.copy()
    b[3] = np.nan
    assert registration.ncc(a, b) == pytest.approx(1.0)
    assert np.isnan(registration.ncc(a, np.ones(10)))


def test_affine_stage_recovers_scale_and_shear():
    # truth: 5 % stretch in x, 3 % shrink in y, 2 % shear, shift (2, 3, 0) mm
    fixed = _phase(False)[0]
    t = sitk.AffineTransform(3)
    t.SetCenter(registration._centre(fixed))
    t.SetMatrix((1.05, 0.02, 0, 0, 0.97, 0, 0, 0, 1.0))
    t.SetTranslation((2.0, 3.0, 0.0))
    reg = registration.register(fixed, _misalign(_phase(True)[0], t))
    assert reg.quality.ok and reg.quality.stage_used == "affine"
    body = sitk.Cast(fixed > -500, sitk.sitkUInt8)
    assert _residual_mm(reg.transform, t, fixed, body) < min(SPACING)


def test_same_inputs_give_the_same_transform(registered):
    fixed, moving, *_, reg = registered
    again = registration.register(fixed, moving)
    assert again.transform.GetParameters() == reg.transform.GetParameters()
    assert again.quality == reg.quality


def test_resampled_is_the_moving_image_on_the_fixed_grid(registered):
    fixed, moving, *_, reg = registered
    out = reg.resampled
    assert out.GetSize() == fixed.GetSize() and out.GetOrigin() == fixed.GetOrigin()
    assert out.GetPixelID() == sitk.sitkFloat32
    want = sitk.Resample(moving, fixed, reg.transform, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(want))
    assert reg.resampled is out  # computed once


@pytest.mark.parametrize("tx", [None, sitk.Euler3DTransform((0, 0, 0), 0.02, -0.03, 0.06, (3.0, -4.5, 2.2)),
                                sitk.AffineTransform([1.05, 0.02, 0, -0.01, 0.97, 0, 0, 0.03, 1.02], [1, 2, -3])])
def test_resample_mask_equals_a_full_resample(tx):
    """The cropped resample of align.resample_mask gives the voxels a whole-grid resample gives."""
    from hccnode.pipeline.align import resample_mask

    ref = sitk.Image([64, 60, 40], sitk.sitkFloat32)
    ref.SetSpacing((0.8, 0.8, 2.0))
    ref.SetOrigin((-25.0, -20.0, -40.0))
    arr = np.zeros((40, 60, 64), np.uint8)
    arr[12:20, 25:34, 30:41] = 1
    arr[5, 50, 10] = 1  # a far voxel widens the box
    mask = sitk.GetImageFromArray(arr)
    mask.SetSpacing((0.7, 0.9, 2.5))
    mask.SetOrigin((-23.0, -21.5, -38.0))
    fast = sitk.GetArrayFromImage(resample_mask(mask, ref, tx))
    full = sitk.GetArrayFromImage(sitk.Resample(mask, ref, tx or sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                sitk.sitkUInt8))
    assert full.sum() > 100
    np.testing.assert_array_equal(fast, full)
    empty = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(mask)
    assert sitk.GetArrayViewFromImage(resample_mask(empty, ref, tx)).sum() == 0


def test_aligner_limited_to_a_box_resamples_only_there():
    """Aligner.limit_to: inside the box the values of a whole-grid resample, NaN (no data) outside."""
    from hccnode.imaging.volumes import Volume
    from hccnode.pipeline.align import Aligner

    def volume(uid, spacing, origin, seed):
        img = sitk.GetImageFromArray(np.random.default_rng(seed).normal(50, 20, (30, 40, 44)).astype(np.float32))
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        return Volume(img, uid, 1, "1.2.3", [f"{uid}.{k}" for k in range(30)], [None] * 30)

    ref = volume("1", (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), 1)
    other = volume("2", (0.9, 1.1, 2.5), (-1.5, 2.0, -3.0), 2)
    whole_aligned = Aligner(ref).through(other, register=False)  # kept: arrays are views of its image
    whole = whole_aligned.array()
    limited = Aligner(ref)
    boxes = [(slice(5, 12), slice(10, 30), slice(3, 20)), (slice(0, 30), slice(2, 6), slice(30, 33))]
    limited.limit_to(boxes)
    part_aligned = limited.through(other, register=False)
    part = part_aligned.array()  # a BoxedArray: no full-size grid
    assert part.shape == whole.shape and not isinstance(part, np.ndarray)
    part = np.asarray(part)
    outside = np.ones(whole.shape, bool)
    for box in boxes:
        np.testing.assert_allclose(part[box], whole[box], rtol=1e-6)  # the sub-grid origin may round differently
        outside[box] = False
    assert np.isnan(part[outside]).all() and np.isfinite(whole[boxes[0]]).any()


def test_registering_ahead_gives_the_transform_of_registering_when_asked(registered, registration_threads):
    """Aligner.register_ahead registers in a background thread while the caller goes on (e.g.
    reading ROIs with SimpleITK filters of its own); `transform` then returns that result, bit
    for bit what registering on demand gives, and registers nothing a second time."""
    from hccnode.imaging.volumes import Volume
    from hccnode.pipeline.align import Aligner

    fixed, moving, *_, reg = registered
    ref = Volume(fixed, "ref", 1, "1.2.3", [], [])
    mov = Volume(moving, "mov", 2, "1.2.3", [], [])
    threads = registration_threads
    threads_before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    aligner = Aligner(ref)
    aligner.register_ahead(mov)
    aligner.register_ahead(mov)  # already under way: not started twice
    smoothed = sitk.SmoothingRecursiveGaussian(fixed, 2.0)  # the caller's own work meanwhile
    tx, record, problem = aligner.transform(mov)
    assert aligner.transform(mov)[0] is tx
    assert len(threads) == 1 and threads[0].startswith("register")
    assert tx.GetParameters() == reg.transform.GetParameters()
    assert problem is None and record["ncc_after"] == round(reg.quality.ncc_after, 4)
    assert smoothed.GetSize() == fixed.GetSize()
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads_before  # restored by the background run
