"""When a phase was acquired after contrast, and whether a paper's cutoff applies to a value read on it.

The delay is the series' acquisition time less its Contrast/Bolus Start Time, as the phase
classifier computes it (hccnode.imaging.phases; hccnode.imaging.series_header reads the times).

The papers' ECV cutoffs were found on one phase timing: paper 001 (Materials and methods, CT
imaging strategy) "120–180 s for the equilibrium phase", naming it a limitation (Discussion: "the
accuracy of ECV fraction is affected by the choice of equilibrium CECT time"); paper 000 (2.2 (2))
"equilibrium phase (2 minutes)". The phase classifier calls anything from 110 s to 30 min
equilibrium (hccnode/data/phase_rules.toml), so a 10-minute delayed phase is an equilibrium phase
too, but not the one the cutoffs were found on. The windows are data (hccnode/data/protocols.toml
[timing]), each with the paper's sentence.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from hccnode.imaging.phases import _delay
from hccnode.imaging.series_header import header_from_datasets


def delay_after_contrast_s(datasets: Sequence[Dataset]) -> float | None:
    """Seconds from Contrast/Bolus Start Time to the series' first acquisition; None when the
    headers do not give both, or the delay is negative (acquired before the injection)."""
    if not datasets:
        return None
    d = _delay(header_from_datasets(list(datasets)))
    return None if d is None or d < 0 else round(float(d), 1)


def outside_window(delay_s: float | None, window: Sequence[float], paper: str, rule: dict) -> str | None:
    """None when `delay_s` lies in paper `paper`'s window [lo, hi] (s); else why its cutoff and
    model are not applied (`rule`: the paper's [timing] entry: quote, or `said` its plain-character
    spelling, section, basis)."""
    lo, hi = float(window[0]), float(window[1])
    said = f"paper {paper} acquired its {rule.get('phase', 'equilibrium')} phase at {lo:g}-{hi:g} s ({rule.get('basis', '')}: " \
           f"\"{rule.get('said', rule['quote'])}\", {rule['section']})"
    if delay_s is None:
        return f"the delay after contrast is not in the series' headers (no Contrast/Bolus Start Time or acquisition " \
               f"time), so it cannot be checked against the paper's timing; {said}"
    if lo <= delay_s <= hi:
        return None
    return f"acquired {delay_s:g} s after contrast start, outside the paper's timing; {said}"
