"""Paper 004 (004_7254fb3d7dd0fb7a.txt, Methods: ultrasound examination): the SWE stiffness
change Delta T that enters TIPM.

Stiffness (kPa, median of 5 SWE measurements per site) is measured before treatment and
after six weeks at 9 intra- and peri-tumoral sites A-E (tumor 12, 3, 6, 9 o'clock and
centre) and F1-F4 (peri-tumoral 2, 5, 8, 11 o'clock). Delta T is positive when >= 5 of the
9 sites show increased stiffness. The card takes the count (input `swe_sites_increased`).
"""

from __future__ import annotations

import math
from typing import Sequence

SITES = ("A", "B", "C", "D", "E", "F1", "F2", "F3", "F4")
POSITIVE_AT = 5


def sites_increased(pre_kpa: Sequence[float], post_kpa: Sequence[float]) -> int:
    """Number of the 9 sites A-F4 whose stiffness (kPa) rose from before treatment to week 6.

    Raises ValueError unless both sequences hold 9 finite values in the order of SITES; a
    site that was not measured cannot be counted either way, so it is an error, not a zero."""
    if len(pre_kpa) != len(SITES) or len(post_kpa) != len(SITES):
        raise ValueError(f"expected {len(SITES)} sites ({', '.join(SITES)}) before and after, got {len(pre_kpa)} and {len(post_kpa)}")
    for site, a, b in zip(SITES, pre_kpa, post_kpa):
        if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < 0:
            raise ValueError(f"site {site}: stiffness must be a finite, non-negative kPa value")
    return sum(1 for a, b in zip(pre_kpa, post_kpa) if b > a)


def delta_t_positive(count: int) -> bool:
    """Delta T > 0 in the paper's sense: >= 5 of the 9 sites stiffer after six weeks."""
    return count >= POSITIVE_AT
