"""Derived indices of paper 003 (and NLR of paper 004) against hand-worked values."""

import pytest
from hypothesis import given, strategies as st

from hccnode.labs import indices

# Hand-worked: neutrophils 4.0, lymphocytes 2.0, monocytes 0.5, platelets 250 (all 10^9/L),
# albumin 40 g/L, ALP 100 U/L.
N, L, M, P, ALB, ALP = 4.0, 2.0, 0.5, 250.0, 40.0, 100.0


def test_hand_worked_values():
    assert indices.nlr(N, L) == 2.0  # 4 / 2
    assert indices.lmr(L, M) == 4.0  # 2 / 0.5
    assert indices.aapr(ALB, ALP) == 0.4  # 40 / 100
    assert indices.siri(N, M, L) == 1.0  # 4 x 0.5 / 2
    assert indices.sii(P, N, L) == 500.0  # 250 x 4 / 2
    assert indices.piv(P, N, M, L) == 250.0  # 250 x 4 x 0.5 / 2


def test_compute_by_name_uses_the_right_inputs():
    values = {"neutrophils": N, "lymphocytes": L, "monocytes": M, "platelets": P, "albumin": ALB, "alp": ALP}
    assert {k: indices.compute(k, values) for k in indices.FUNCTIONS} == {
        "nlr": 2.0, "lmr": 4.0, "aapr": 0.4, "siri": 1.0, "sii": 500.0, "piv": 250.0}
    assert set(indices.UNITS) == set(indices.INPUTS) == set(indices.FUNCTIONS)


def test_paper_003_cutoffs_sit_on_the_right_side():
    # A draw with NLR 4.5 is at or above paper 003's NLR cut-off of 4.41; NLR 3 is at or below paper 004's "> 3".
    assert indices.nlr(9.0, 2.0) >= 4.41
    assert not indices.nlr(3.0, 1.0) > 3


@pytest.mark.parametrize("call", [lambda: indices.nlr(4, 0), lambda: indices.lmr(2, 0), lambda: indices.aapr(40, 0),
                                  lambda: indices.siri(4, 1, 0), lambda: indices.piv(1, 1, 1, 0), lambda: indices.sii(1, 1, -1)])
def test_zero_denominator_is_an_error_not_infinity(call):
    with pytest.raises(ValueError, match="denominator"):
        call()


pos = st.floats(min_value=0.01, max_value=1000)


@given(pos, pos, pos, pos)
def test_identities_between_indices(n, l, m, p):
    assert indices.siri(n, m, l) == pytest.approx(indices.nlr(n, l) * m)
    assert indices.sii(p, n, l) == pytest.approx(indices.nlr(n, l) * p)
    assert indices.piv(p, n, m, l) == pytest.approx(indices.siri(n, m, l) * p)
    assert indices.nlr(n, l) * indices.lmr(l, m) == pytest.approx(n / m)
