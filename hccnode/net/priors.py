"""Priors: fetch an MR follow-up's baseline study from the PACS, so the pair can be analysed.

Paper 003 pairs a baseline MRI "within 2 weeks prior to treatment initiation" with a follow-up
"at 8 weeks post-treatment": the baseline lies 56 to 70 days before the follow-up, widened by the
site's `[priors] tolerance_days`. The rule and the choice are hccnode.models.p003_pairing's (the
pipeline pairs studies already in the node with the same function). The paper's 6-month MRI is not
paired: a 6-month study finds no baseline in this window, which is the answer paper 003 gives.

The pieces:
- `select_baseline` (pure, hccnode.models.p003_pairing): C-FIND candidates + the follow-up's date ->
  the study to fetch, with a reason for every candidate;
- `find_identifier`, `candidate_from_match`: the C-FIND identifier (Study Root, STUDY level,
  PatientID, ModalitiesInStudy MR, StudyDate range) and its matches as candidates;
- `fetch_baseline(cfg, store, study_uid)`: the I/O shell the pipeline and `hccnode priors` call.

Retrieval: C-MOVE to the node's own AE title (`node.ae_title`): the PACS opens an association to
the node's listener, so the instances arrive through the Storage SCP and the spool like any
other, and are indexed before the PACS's final response. The PACS must therefore know the node's
AE title, host and port (for Orthanc: an entry in DicomModalities). C-GET is the fallback (the
instances come back on the query association and go through the same `Spool.ingest`); with
`retrieve = "auto"` it is used when the node's listener does not answer or the PACS cannot
move to the node.

The C-FIND identifier carries the Patient ID: it is never logged, audited or printed. Candidates
hold only whether the PACS's Patient ID (and issuer) matched, not the value.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from hccnode import log
from hccnode.config import Config, Destination, dimse_destinations, parse_destination
from hccnode.models.p003_pairing import (  # noqa: F401 - the one pairing rule, re-exported for callers
    BASELINE_BEFORE_TREATMENT_MAX_DAYS,
    FOLLOWUP_AFTER_TREATMENT_DAYS,
    Candidate,
    Selection,
    Verdict,
    Window,
    parse_date,
    select_baseline,
)
from hccnode import dicom_status as status
from hccnode.net import scu
from hccnode.net.forward import client_tls
from hccnode.store import audit, studies
from hccnode.store.db import Store

MODALITY = "MR"
ACTOR = "priors"
# -- C-FIND identifier and matches --------------------------------------------------------

def find_identifier(patient_id: str, issuer: str | None, followup_date: dt.date, window: Window) -> Dataset:
    """Study Root, STUDY level: this patient's MR studies from `window.max_days` before the
    follow-up up to its day (the follow-up and too-recent studies come back and are judged too)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer or ""      # a return key: compared, not matched (not every PACS matches it)
    start = followup_date - dt.timedelta(days=int(window.max_days) + 1)
    ds.StudyDate = f"{start:%Y%m%d}-{followup_date:%Y%m%d}"
    ds.StudyTime = ""
    ds.ModalitiesInStudy = MODALITY
    ds.StudyInstanceUID = ""
    ds.StudyDescription = ""
    ds.NumberOfStudyRelatedSeries = ""
    ds.NumberOfStudyRelatedInstances = ""
    return ds


def candidate_from_match(ds: Dataset, patient_id: str, issuer: str | None) -> Candidate:
    """A C-FIND match as a Candidate; Patient ID and issuer are compared here and dropped."""
    got_id = str(ds.get("PatientID", "") or "").strip()
    got_issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    same = (not got_id or got_id == patient_id.strip()) and \
           (not got_issuer or not issuer or got_issuer == issuer.strip())
    mods = ds.get("ModalitiesInStudy", "")
    mods = tuple(str(m).strip() for m in (mods if isinstance(mods, (list, tuple, MultiValue))
                                           else [mods]) if str(m).strip())
    n = ds.get("NumberOfStudyRelatedInstances", None)
    try:
        n = int(n) if n not in (None, "") else None
    except (TypeError, ValueError):
        n = None
    return Candidate(str(ds.get("StudyInstanceUID", "") or ""), parse_date(ds.get("StudyDate", "")),
                     str(ds.get("StudyTime", "") or ""), mods, str(ds.get("StudyDescription", "") or ""), n, same)


# -- the I/O shell --------------------------------------------------------------------------

@dataclass
class PriorResult:
    """What `fetch_baseline` did. `state`: fetched (retrieved now) | present (already in the store) |
    found (query only) | no_baseline | skipped (not applicable: disabled, not MR, no Patient ID or date) |
    failed (PACS unreachable, refused, or the retrieve did not complete)."""

    followup_uid: str
    state: str
    message: str
    baseline_uid: str | None = None
    followup_date: str | None = None
    pacs: str | None = None
    method: str | None = None             # "move" | "get"
    window: str | None = None
    verdicts: list[dict] = field(default_factory=list)
    completed: int = 0                    # sub-operations the PACS reports completed (with warnings)
    failed: int = 0
    indexed: int = 0                      # baseline instances in the node's store afterwards

    @property
    def ok(self) -> bool:
        """True when the baseline is in the node's store."""
        return self.state in ("fetched", "present")

    def as_dict(self) -> dict:
        return asdict(self)


def pacs_destination(cfg: Config) -> Destination | None:
    """`[priors] pacs`, else the first `[forward]` AE@host:port destination, else None."""
    text = cfg.priors.pacs or next(iter(dimse_destinations(cfg.forward)), "")
    return parse_destination(text) if text else None


def _verdict_row(v: Verdict) -> dict:
    c = v.candidate
    return {"study_uid": c.study_uid, "study_date": c.study_date.isoformat() if c.study_date else None,
            "modalities": list(c.modalities), "instances": c.instances, "days_before": v.days_before,
            "eligible": v.eligible, "in_paper_window": v.in_paper_window, "reason": v.reason}


def _local_count(store: Store, study_uid: str) -> int:
    return studies.instance_count(store, study_uid)


class _NotApplicable(Exception):
    """The study cannot be paired: not stored, not MR, no Patient ID or no date."""


@dataclass(frozen=True)
class _Followup:
    study_uid: str
    date: dt.date
    patient_key: str | None
    patient_id: str                       # PHI: for the C-FIND identifier only
    issuer: str | None

    def __repr__(self) -> str:            # never print the Patient ID by accident
        return f"_Followup({self.study_uid!r}, {self.date})"


def _followup(store: Store, study_uid: str) -> _Followup:
    """The stored follow-up: its date from the index, Patient ID and issuer from one MR instance's header."""
    held = studies.study_date_time(store, study_uid)
    if held is None:
        raise _NotApplicable(f"study {study_uid} is not in the node's store")
    mods = studies.modalities(store, study_uid)
    if MODALITY not in mods:
        raise _NotApplicable(f"study {study_uid} has no {MODALITY} series (modalities: "
                             f"{', '.join(sorted(m or '?' for m in mods))}); paper 003 pairs MR studies")
    path = studies.an_instance_path(store, study_uid, MODALITY)
    try:
        ds = pydicom.dcmread(store.data_dir / path, stop_before_pixels=True,
                             specific_tags=["PatientID", "IssuerOfPatientID", "StudyDate"])
    except (OSError, InvalidDicomError) as exc:
        raise _NotApplicable(f"study {study_uid}: cannot read a stored instance ({type(exc).__name__})") from None
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        raise _NotApplicable(f"study {study_uid} has no Patient ID: the PACS cannot be asked for the same patient")
    date = parse_date(held[0]) or parse_date(ds.get("StudyDate", ""))
    if date is None:
        raise _NotApplicable(f"study {study_uid} has no usable Study Date: no window to look in")
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip() or None
    return _Followup(study_uid, date, studies.patient_key(store, study_uid), patient_id, issuer)


def _own_listener(cfg: Config) -> Destination | None:
    """Where the node's plain listener answers, or None when it listens on TLS only."""
    if cfg.tls.enabled and not cfg.tls.keep_plain_listener:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(cfg.node.host, cfg.node.host)
    return Destination(cfg.node.ae_title, host, cfg.node.port)


def _listener_answers(cfg: Config) -> bool | None:
    dest = _own_listener(cfg)
    if dest is None:
        return None
    try:
        return scu.echo(dest, cfg.forward.ae_title, timeout=min(cfg.priors.timeout, 5.0)) == status.SUCCESS
    except scu.AssociationFailed as exc:
        return "rejected" in str(exc)     # the allow-list refused us: the listener is there


class _GetStore:
    """C-STORE sub-operations of a C-GET, kept by the spool as the SCP keeps them."""

    def __init__(self, store: Store, peer_ae: str):
        from hccnode.store.spool import Spool
        self.spool, self.peer_ae = Spool(store), peer_ae

    def __call__(self, event):
        req = event.request
        try:
            r = self.spool.ingest(str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID),
                                  str(event.context.transfer_syntax), event.encoded_dataset(include_meta=False),
                                  self.peer_ae)
        except Exception as exc:
            log.event("prior.store_failed", level=logging.ERROR, sop=str(req.AffectedSOPInstanceUID), error=type(exc).__name__)
            return status.OUT_OF_RESOURCES
        return r.status


def _retrieve(cfg: Config, store: Store, pacs: Destination, study_uid: str, tls) -> tuple[str, scu.RetrieveResult]:
    """C-MOVE to our own AE title and/or C-GET, per `[priors] retrieve`; returns (method, result)."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study_uid
    how = cfg.priors.retrieve
    calling, timeout = cfg.forward.ae_title, cfg.priors.timeout

    def by_get():
        return "get", scu.get(pacs, ident, _GetStore(store, pacs.ae_title), calling, timeout, tls)

    if how == "get":
        return by_get()
    if how == "auto" and _listener_answers(cfg) is False:
        log.event("prior.move_skipped", level=logging.WARNING, study=study_uid,
                  reason=f"the node's listener ({_own_listener(cfg)}) does not answer; using C-GET")
        return by_get()
    try:
        result = scu.move(pacs, ident, cfg.node.ae_title, calling, timeout, tls)
    except scu.QueryFailed as exc:
        if how != "auto" or "does not accept" not in str(exc):
            raise
        log.event("prior.move_refused", level=logging.WARNING, study=study_uid, reason=str(exc))
        return by_get()
    if how == "auto" and _nothing_delivered(result):
        log.event("prior.move_failed", level=logging.WARNING, study=study_uid, status=f"0x{result.status:04X}",
                  failed=result.failed, reason="the PACS could not deliver to this node; using C-GET")
        return by_get()
    return "move", result


def _nothing_delivered(result: scu.RetrieveResult) -> bool:
    """A failed C-MOVE that delivered nothing: the PACS does not know or cannot reach the node (a PACS
    may say so with 0xA801 or, as Orthanc does, 0xC000 'unable to process')."""
    return not result.ok and result.completed == 0 and result.warning == 0


def _move_hint(cfg: Config, result: scu.RetrieveResult) -> str:
    if result.status == status.MOVE_DESTINATION_UNKNOWN or _nothing_delivered(result):
        return (f"; the PACS must know this node's AE title {cfg.node.ae_title!r} with its host and port "
                f"(port {cfg.node.port}), and `hccnode serve` must be running to receive")
    return ""


def fetch_baseline(cfg: Config, store: Store, study_uid: str, *, even_if_disabled: bool = False,
                   retrieve: bool = True) -> PriorResult:
    """Find the baseline of the MR follow-up `study_uid` on the PACS and bring it into the store.

    Returns a PriorResult; never raises for a PACS that is down, refuses or finds nothing (state
    "failed" / "no_baseline" with the reason). `retrieve=False` queries and selects only.
    With `[priors] enabled = false` it does nothing (state "skipped") unless `even_if_disabled`.
    Audit: prior.queried (candidates, choice, reasons), prior.retrieved, prior.failed.
    """
    if not (cfg.priors.enabled or even_if_disabled):
        return PriorResult(study_uid, "skipped", "priors are disabled ([priors] enabled = false)")
    try:
        fu = _followup(store, study_uid)
    except _NotApplicable as exc:
        return PriorResult(study_uid, "skipped", str(exc))
    followup_date, patient_key = fu.date, fu.patient_key
    window = Window(cfg.priors.tolerance_days)
    result = PriorResult(study_uid, "failed", "", followup_date=followup_date.isoformat(), window=window.describe())
    pacs = pacs_destination(cfg)
    if pacs is None:
        result.message = "no PACS configured: set [priors] pacs (or [forward] destinations)"
        return result
    result.pacs = str(pacs)

    def failed(message: str, **details) -> PriorResult:
        result.state, result.message = "failed", message
        log.event("prior.failed", level=logging.WARNING, study=study_uid, pacs=str(pacs), reason=message)
        audit.append(store, "prior.failed", ACTOR, study_uid=study_uid, patient_key=patient_key,
                     pacs=str(pacs), reason=message, **details)
        return result

    tls = client_tls(cfg)
    try:
        matches = scu.find(pacs, find_identifier(fu.patient_id, fu.issuer, followup_date, window),
                           cfg.forward.ae_title, cfg.priors.timeout, tls)
    except (scu.AssociationFailed, scu.QueryFailed) as exc:
        return failed(f"cannot query the PACS: {exc}", step="query")
    candidates = [candidate_from_match(m, fu.patient_id, fu.issuer) for m in matches]
    sel = select_baseline(candidates, study_uid, followup_date, window)
    result.verdicts = [_verdict_row(v) for v in sel.verdicts]
    chosen = sel.chosen
    log.event("prior.queried", study=study_uid, pacs=str(pacs), candidates=len(candidates),
              chosen=chosen.study_uid if chosen else None)
    audit.append(store, "prior.queried", ACTOR, study_uid=study_uid, patient_key=patient_key, pacs=str(pacs),
                 window=window.describe(), chosen=chosen.study_uid if chosen else None, reason=sel.reason,
                 candidates=result.verdicts)
    if chosen is None:
        result.state, result.message = "no_baseline", sel.reason
        return result
    result.baseline_uid = chosen.study_uid
    local = _local_count(store, chosen.study_uid)
    if local and chosen.instances is not None and local >= chosen.instances:
        result.state, result.indexed = "present", local
        result.message = f"baseline {chosen.study_uid} already in the store ({local} instances): {sel.reason}"
        return result
    if not retrieve:
        result.state, result.indexed = "found", local
        result.message = f"baseline {chosen.study_uid} found, not retrieved (query only): {sel.reason}"
        return result
    try:
        method, got = _retrieve(cfg, store, pacs, chosen.study_uid, tls)
    except (scu.AssociationFailed, scu.QueryFailed) as exc:
        return failed(f"cannot retrieve baseline {chosen.study_uid}: {exc}", step="retrieve",
                      baseline=chosen.study_uid)
    result.method, result.completed, result.failed = method, got.completed + got.warning, got.failed
    result.indexed = _local_count(store, chosen.study_uid)
    verb = "C-MOVE to " + cfg.node.ae_title if method == "move" else "C-GET"
    if not got.ok or result.indexed == 0:
        hint = _move_hint(cfg, got) if method == "move" else ""
        return failed(f"{verb} of baseline {chosen.study_uid}: status 0x{got.status:04X} "
                      f"({status.qr_meaning(got.status)}); {result.completed} completed, {got.failed} failed"
                      + (f": {got.error}" if got.error else "")
                      + ("; nothing arrived in the store" if not result.indexed else "") + hint,
                      step="retrieve", baseline=chosen.study_uid, method=method, status=got.status,
                      completed=result.completed, failed=got.failed)
    result.state = "fetched"
    result.message = (f"baseline {chosen.study_uid}: {result.completed} instances retrieved by {verb}, "
                      f"{result.indexed} in the store: {sel.reason}")
    log.event("prior.retrieved", study=study_uid, baseline=chosen.study_uid, method=method,
              completed=result.completed, indexed=result.indexed)
    audit.append(store, "prior.retrieved", ACTOR, study_uid=study_uid, patient_key=patient_key, pacs=str(pacs),
                 baseline=chosen.study_uid, method=method, completed=result.completed, indexed=result.indexed)
    return result
