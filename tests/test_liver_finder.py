"""The liver found where it touches other organs without fat planes (hccnode.imaging.liver), on
abdomens whose every organ touches its neighbours (abdomen_no_fat: no fat anywhere inside)."""

import numpy as np
import pytest

from abdomen_no_fat import HU, bowel_loops, scene
from hccnode.imaging import anatomy, ecv, liver
from hccnode.imaging.auto_rois import LIVER_LABELS, ct_roi_masks
from hccnode.phantom.bodies_eval import ecv_floor_sd

CASES = ["standard", "fatty", "cirrhotic", "big"]
HCT = 0.40
NOISE_HU = 12.0   # abdomen_no_fat.scene's default: white noise added to every phase


def _extent(s, unenhanced):
    eq = s.phases["equilibrium"]
    body = anatomy.body_mask(eq)
    spine = anatomy.find_spine(eq, s.spacing, body)
    return liver.find_liver_extent(eq, s.spacing, body, spine.x, spine.anterior_y,
                                   s.phases["unenhanced"] if unenhanced else None, enhanced=True)


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return request.param, scene(request.param, seed=CASES.index(request.param))


@pytest.mark.parametrize("unenhanced", [False, True], ids=["one phase", "with unenhanced"])
def test_liver_extent_matches_the_true_liver(case, unenhanced):
    name, s = case
    found, why = _extent(s, unenhanced)
    assert found is not None, why
    overlap = (found.organ & s.liver).sum()
    dice = 2 * overlap / (found.organ.sum() + s.liver.sum())
    # a fatty liver of muscle attenuation in one phase takes some abdominal wall with it at its edge
    assert dice >= 0.85, f"{name}: Dice {dice:.3f}"


@pytest.mark.parametrize("unenhanced", [False, True], ids=["one phase", "with unenhanced"])
def test_liver_rois_lie_inside_the_true_liver_and_give_its_ecv(case, unenhanced):
    name, s = case
    eq, un = s.phases["equilibrium"], s.phases["unenhanced"]
    placed, notes = ct_roi_masks(eq, s.spacing, unenhanced=un if unenhanced else None)
    livers = [p for p in placed if p.role == "liver"]
    # the small cirrhotic liver of this scene has no left lobe: two ROIs, the third noted
    assert len(livers) >= (2 if name == "cirrhotic" else 3), notes
    for p in livers:
        assert s.liver[p.mask].all(), f"{name}: {p.label} reaches outside the liver"
        assert p.label in LIVER_LABELS
    aorta = next(p for p in placed if p.role == "aorta")
    # paper 001: ECV = (1 - HCT) x dHU_liver / dHU_aorta; the scene's truth from its HU table
    kind = "fatty" if name == "fatty" else "liver"
    truth = (1 - HCT) * (HU["equilibrium"][kind] - HU["unenhanced"][kind]) / (
        HU["equilibrium"]["blood"] - HU["unenhanced"]["blood"]) * 100.0
    r = ecv.cect_ecv([float(un[p.mask].mean()) for p in livers], [float(eq[p.mask].mean()) for p in livers],
                     float(un[aorta.mask].mean()), float(eq[aorta.mask].mean()), HCT)
    # within 1 pp, or 3 SD of what the scene's white noise (NOISE_HU per voxel) alone gives these ROIs
    floor = ecv_floor_sd(truth, HU["equilibrium"][kind] - HU["unenhanced"][kind],
                         HU["equilibrium"]["blood"] - HU["unenhanced"]["blood"],
                         [int(p.mask.sum()) for p in livers], int(aorta.mask.sum()), NOISE_HU, 1.0)
    assert r.ecv_percent == pytest.approx(truth, abs=max(1.0, 3.0 * floor))


def test_sample_reads_the_liver_attenuation_in_every_phase(case):
    name, s = case
    kind = "fatty" if name == "fatty" else "liver"
    for phase in ("portal", "equilibrium"):
        region = anatomy.find_liver(s.phases[phase], s.spacing)
        assert region is not None
        assert region.median_hu == pytest.approx(HU[phase][kind], abs=5)


def test_without_a_liver_nothing_is_taken_for_it_and_the_reason_says_what_was_found():
    s = scene("standard")
    eq = s.phases["equilibrium"].copy()
    # a scan below the liver: bowel loops where the liver was, and filling the rest of the belly
    belly = s.liver | s.bowel
    eq[belly] = bowel_loops(eq.shape, s.spacing, seed=5)[belly]
    placed, notes = ct_roi_masks(eq, s.spacing)
    assert not [p for p in placed if p.role == "liver"]
    note = next(n for n in notes if n.startswith("liver ROIs not placed"))
    assert "HU" in note      # what the band found instead, by its attenuation
    assert [p for p in placed if p.role == "aorta"]      # everything else is still measured


def test_water_like_tissue_is_not_the_liver_in_an_enhanced_phase():
    s = scene("cirrhotic")
    eq = s.phases["equilibrium"]
    body = anatomy.body_mask(eq)
    spine = anatomy.find_spine(eq, s.spacing, body)
    found, _ = liver.find_liver_extent(eq, s.spacing, body, spine.x, spine.anterior_y, enhanced=True)
    assert found is not None and found.band_hu[0] > liver.LIVER_MIN_ENHANCED_HU
