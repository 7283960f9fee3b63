"""Paper 003's time points: which MR study is a follow-up's baseline, and when its labs were drawn.

Paper 003 (Han S et al., "Integration of multiparametric MRI and clinical indicators to predict
response to immune-targeted therapy in patients with advanced hepatocellular carcinoma"; Materials
and methods, Patients) pairs a baseline MRI with a follow-up MRI:

  "(3) abdominal MRI performed within 2 weeks prior to treatment initiation and at 8 weeks and
  6 months following therapy"; exclusion "(3) an interval exceeding 2 weeks between baseline MRI
  and therapy initiation"; "(6) availability of complete clinical laboratory results obtained
  within 2 weeks prior to treatment".

So the baseline lies 56 to 70 days before the follow-up (`Window`; the paper publishes no
scheduling margin around "8 weeks": that is a site value, `[priors] tolerance_days`, and every
baseline found only thanks to it says so), and the labs are the ones drawn in the 14 days before
treatment start, or, when the node is not told that date, before the baseline MRI (`lab_anchor`).

ONE rule for both places that pair studies: `select_baseline` is used by the priors fetcher
(hccnode.net.priors, C-FIND candidates on the PACS) and by the pipeline (hccnode.pipeline.driver,
the MR studies already in the node). A pair outside the window is not a paper-003 pair. Pure:
no I/O; the same candidates in any order give the same choice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# Paper 003, Materials and methods, Patients: follow-up MRI "at 8 weeks post-treatment";
# baseline MRI "within 2 weeks prior to treatment initiation".
FOLLOWUP_AFTER_TREATMENT_DAYS = 8 * 7
BASELINE_BEFORE_TREATMENT_MAX_DAYS = 2 * 7
MODALITY = "MR"
# "(6) ... clinical laboratory results obtained within 2 weeks prior to treatment"
LABS_BEFORE_TREATMENT_DAYS = 2 * 7


@dataclass(frozen=True)
class Window:
    """Days from the baseline's study date back from the follow-up's: paper 003's interval,
    widened by a site tolerance (not published by the paper)."""

    tolerance_days: float = 0.0
    nominal_min_days: int = FOLLOWUP_AFTER_TREATMENT_DAYS                                    # 56
    nominal_max_days: int = FOLLOWUP_AFTER_TREATMENT_DAYS + BASELINE_BEFORE_TREATMENT_MAX_DAYS  # 70

    @property
    def min_days(self) -> float:
        return max(1.0, self.nominal_min_days - self.tolerance_days)   # the baseline is on an earlier day

    @property
    def max_days(self) -> float:
        return self.nominal_max_days + self.tolerance_days

    def describe(self) -> str:
        return (f"{self.min_days:g}-{self.max_days:g} days before the follow-up (paper 003: "
                f"{self.nominal_min_days}-{self.nominal_max_days}; site tolerance ±{self.tolerance_days:g}, "
                f"not published by the paper)")


@dataclass(frozen=True)
class Candidate:
    """One C-FIND match, without patient identity."""

    study_uid: str
    study_date: dt.date | None
    study_time: str = ""
    modalities: tuple[str, ...] = ()      # empty: the PACS did not return ModalitiesInStudy
    description: str = ""
    instances: int | None = None          # NumberOfStudyRelatedInstances, when returned
    same_patient: bool = True             # False: the PACS returned another Patient ID or issuer


@dataclass(frozen=True)
class Verdict:
    candidate: Candidate
    eligible: bool
    reason: str
    days_before: int | None = None        # follow-up date - candidate date
    in_paper_window: bool = False         # within paper 003's 56-70 days, not only the tolerance


@dataclass(frozen=True)
class Selection:
    chosen: Candidate | None
    verdicts: tuple[Verdict, ...]         # one per candidate, in input order
    reason: str                           # why this one, or why none


def parse_date(text: str | None) -> dt.date | None:
    """A DICOM DA value (YYYYMMDD; also the old YYYY.MM.DD) as a date, or None."""
    digits = "".join(ch for ch in str(text or "") if ch.isdigit())
    if len(digits) != 8:
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def _seconds(tm: str) -> int:
    digits = "".join(ch for ch in tm.split(".")[0] if ch.isdigit())[:6].ljust(6, "0")
    return int(digits[:2]) * 3600 + int(digits[2:4]) * 60 + int(digits[4:6]) if digits.isdigit() else 0


def _judge(c: Candidate, followup_uid: str, followup_date: dt.date, window: Window) -> Verdict:
    if c.study_uid == followup_uid:
        return Verdict(c, False, "the follow-up itself")
    if not c.same_patient:
        return Verdict(c, False, "the PACS returned another patient (Patient ID or issuer differs)")
    if c.modalities and MODALITY not in c.modalities:
        return Verdict(c, False, f"no {MODALITY} series (modalities: {', '.join(c.modalities)})")
    if c.study_date is None:
        return Verdict(c, False, "no usable Study Date: cannot place it in the window")
    days = (followup_date - c.study_date).days
    if days < 0:
        return Verdict(c, False, f"{-days} days after the follow-up", days)
    if days < window.min_days:
        return Verdict(c, False, f"{days} days before the follow-up: fewer than the window's {window.min_days:g}", days)
    if days > window.max_days:
        return Verdict(c, False, f"{days} days before the follow-up: more than the window's {window.max_days:g}", days)
    if c.instances == 0:
        return Verdict(c, False, "the PACS reports no instances in this study", days)
    nominal = window.nominal_min_days <= days <= window.nominal_max_days
    if nominal:
        why = (f"{days} days before the follow-up: within paper 003's {window.nominal_min_days}-"
               f"{window.nominal_max_days} days")
    else:
        why = (f"{days} days before the follow-up: outside paper 003's {window.nominal_min_days}-"
               f"{window.nominal_max_days} days, within the site tolerance of ±{window.tolerance_days:g} days "
               f"(a margin paper 003 does not publish)")
    return Verdict(c, True, why, days, nominal)


def _rank(v: Verdict, window: Window) -> tuple:
    """Smaller is better: inside paper 003's interval first; then nearest to it; then the latest
    (the scan nearest to treatment start, as a baseline is the last scan before it), the later
    time on the same day, the more instances; the UID only to make the choice deterministic."""
    days = v.days_before or 0
    outside = max(window.nominal_min_days - days, days - window.nominal_max_days, 0)
    return (not v.in_paper_window, outside, days, -_seconds(v.candidate.study_time),
            -(v.candidate.instances or 0), v.candidate.study_uid)


def select_baseline(candidates: list[Candidate], followup_uid: str, followup_date: dt.date,
                    window: Window) -> Selection:
    """The baseline study to fetch for the follow-up `followup_uid` acquired on `followup_date`.

    A candidate is eligible when it is not the follow-up, belongs to the same patient, has MR
    series (or the PACS did not say), has a Study Date `window.min_days`..`window.max_days` before
    the follow-up (see `Window`; paper 003: 56-70 days), and is not reported empty. Among eligible
    ones `_rank` decides. Pure: the same candidates in any order give the same choice.
    """
    verdicts = [_judge(c, followup_uid, followup_date, window) for c in candidates]
    eligible = [v for v in verdicts if v.eligible]
    if not eligible:
        why = (f"no {MODALITY} study of this patient {window.describe()}" if candidates
               else f"the PACS has no other {MODALITY} study of this patient in the queried dates")
        return Selection(None, tuple(verdicts), why)
    best = min(eligible, key=lambda v: _rank(v, window))
    final = []
    for v in verdicts:
        if v is best:
            v = Verdict(v.candidate, True, "chosen: " + v.reason, v.days_before, v.in_paper_window)
        elif v.eligible:
            v = Verdict(v.candidate, True, f"eligible, but {best.candidate.study_uid} is preferred: " + v.reason,
                        v.days_before, v.in_paper_window)
        final.append(v)
    others = len(eligible) - 1
    return Selection(best.candidate, tuple(final),
                     best.reason + (f" ({others} other eligible: preferred as nearest to paper 003's interval, "
                                    "then latest)" if others else ""))


def lab_anchor(baseline_mri: dt.datetime | None, treatment_start: dt.datetime | None) -> tuple[dt.datetime | None, str]:
    """The time paper 003's labs are matched before ("within 2 weeks prior to treatment"), and its name:
    the treatment start when the node is given one, else the baseline MRI (inclusion criterion 3 puts
    it at most 2 weeks before treatment, so it stands in for the start the node was not told)."""
    if treatment_start is not None:
        return treatment_start, f"treatment start ({treatment_start.date().isoformat()})"
    if baseline_mri is not None:
        return baseline_mri, (f"the baseline MRI ({baseline_mri.date().isoformat()}; no treatment-start date given, "
                              "paper 003 puts it within 2 weeks before treatment)")
    return None, "the baseline MRI (its time is unknown)"


def treatment_start_problem(start: dt.date, baseline: dt.date | None, followup: dt.date | None) -> str | None:
    """What in a treatment start contradicts paper 003's time points, or None.

    Inclusion (3): baseline MRI "within 2 weeks prior to treatment initiation", follow-up "at 8 weeks
    ... following therapy"; exclusion (3): "an interval exceeding 2 weeks between baseline MRI and
    therapy initiation". `baseline` is the baseline MRI's date (the study itself when it is one),
    `followup` the follow-up's (None when the study is not one). The labs are still matched before
    the given date; the note says the pair is not one paper 003 would have included."""
    problems = []
    if followup is not None and start >= followup:
        problems.append(f"it is not before the follow-up MRI of {followup.isoformat()} (paper 003: follow-up "
                        "\"at 8 weeks ... following therapy\")")
    if baseline is not None and start < baseline:
        problems.append(f"it is before the baseline MRI of {baseline.isoformat()} (paper 003: baseline MRI "
                        "\"within 2 weeks prior to treatment initiation\")")
    elif baseline is not None and (start - baseline).days > BASELINE_BEFORE_TREATMENT_MAX_DAYS:
        problems.append(f"it is {(start - baseline).days} days after the baseline MRI of {baseline.isoformat()} "
                        "(paper 003 excludes \"an interval exceeding 2 weeks between baseline MRI and therapy "
                        "initiation\")")
    if not problems:
        return None
    return f"treatment start {start.isoformat()} does not fit paper 003's time points: " + "; ".join(problems)
