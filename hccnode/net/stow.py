"""DICOMweb out: STOW-RS to a base URL, each instance then confirmed by QIDO-RS (PS3.18 10.5, 10.6).

A STOW-RS answer is not trusted alone (an HTTP 200 has been seen without the data stored): an
instance counts as delivered only when a QIDO-RS search of its study finds its SOP Instance UID.
Per-instance failures of a STOW-RS answer (Failed SOP Sequence, Failure Reason; with HTTP 409, 202
or 200) fail that instance only. Every error names the destination URL, which never holds
credentials (hccnode.config.check_dicomweb_url): the bearer token or user:password is read from its
file for each send and goes into the Authorization header only, never into a message or a log.
Retries and backoff are the outbox's; the client's own retries are off.
"""

from __future__ import annotations

import base64
from http import HTTPStatus
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.errors import InvalidDicomError

from hccnode import dicom_status as status
from hccnode.config import DicomWebOptions
from hccnode.net.scu import SendResult

# Failure Reason (0008,1197) of a STOW-RS response: PS3.18 Table I.2-2, as (first, last, meaning).
FAILURE_REASONS = (
    (0xC122, 0xC122, "referenced transfer syntax not supported"),
    (0x0110, 0x0110, "processing failure"),
    (0x0122, 0x0122, "referenced SOP class not supported"),
    (0xA700, 0xA7FF, "refused: out of resources"),
    (0xA900, 0xA9FF, "error: data set does not match SOP class"),
    (0xC000, 0xCFFF, "error: cannot understand"),
)
FAILURE_REASON, WARNING_REASON = 0x00081197, 0x00081196


class StowError(RuntimeError):
    """A credentials file cannot be used (raised while a request is prepared, before it is sent)."""


def failure_meaning(code: int) -> str:
    """The meaning of a Failure Reason (the first matching row of PS3.18 Table I.2-2)."""
    return next((m for lo, hi, m in FAILURE_REASONS if lo <= code <= hi), "not defined in PS3.18 Table I.2-2")


class _Auth(requests.auth.AuthBase):
    """Sets Authorization from a file at request time; its value is never kept in a message."""

    def __init__(self, opts: DicomWebOptions):
        self.opts = opts

    def __call__(self, request):
        if self.opts.token_file:
            request.headers["Authorization"] = "Bearer " + _secret(self.opts.token_file, "token_file")
        elif self.opts.basic_auth_file:
            pair = _secret(self.opts.basic_auth_file, "basic_auth_file")
            if ":" not in pair:
                raise StowError(f"basic_auth_file {self.opts.basic_auth_file}: expected one line 'user:password'")
            request.headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return request


def _secret(path: str, key: str) -> str:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError) as exc:
        raise StowError(f"{key} {path}: cannot be read ({getattr(exc, 'strerror', None) or 'not UTF-8 text'})") from None
    if not text or "\n" in text:
        raise StowError(f"{key} {path}: expected exactly one non-empty line")
    return text


def session(opts: DicomWebOptions, answers: list[int] | None = None) -> requests.Session:
    """An HTTP session: TLS verified (against `opts.ca_bundle`, else the system's CAs), the
    configured credentials, no proxy or CA bundle from the environment. The HTTP status of each
    answer is appended to `answers`."""
    s = requests.Session()
    if answers is not None:
        s.hooks["response"].append(lambda rsp, *args, **kwargs: answers.append(rsp.status_code))
    s.trust_env = False          # else REQUESTS_CA_BUNDLE would override ca_bundle
    s.verify = str(Path(opts.ca_bundle).expanduser()) if opts.ca_bundle else True
    s.auth = _Auth(opts)
    s.headers["Accept"] = "application/dicom+json"
    return s


def client(url: str, opts: DicomWebOptions, http: requests.Session) -> DICOMwebClient:
    """A dicomweb-client for `url` over `http`, without retries of its own (the outbox retries)."""
    c = DICOMwebClient(url, session=http, timeout=(min(10.0, opts.timeout), opts.timeout))
    c.set_http_retry_params(retry=False)
    return c


def _why(exc: Exception, opts: DicomWebOptions) -> str:
    """What went wrong with a request, in words (no exception class names)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return _http_text(exc.response, opts)
    if isinstance(exc, requests.exceptions.SSLError):
        cause = _cause(exc, lambda e: getattr(e, "verify_message", None))
        what = f"certificate verify failed: {cause.verify_message}" if cause else "handshake failed"
        return f"TLS failed: {what}" + ("" if opts.ca_bundle else " (no ca_bundle configured: the system's CAs were used)")
    if isinstance(exc, requests.Timeout):
        return f"no answer within {opts.timeout:g} s"
    if isinstance(exc, requests.ConnectionError):
        cause = _cause(exc, lambda e: isinstance(e, OSError) and e.strerror)
        return f"cannot connect: {cause.strerror.lower() if cause else 'connection failed'}"
    if isinstance(exc, StowError):
        return str(exc)
    return f"request failed: {exc}"   # dicomweb-client's ValueErrors name a URL or UID, no data


def _cause(exc: BaseException, wanted) -> BaseException | None:
    """The first exception in `exc`'s chain (causes, contexts, urllib3 reasons) for which `wanted` holds."""
    seen, todo = set(), [exc]
    while todo and len(seen) < 20:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if wanted(e):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    return None


def _http_text(rsp: requests.Response, opts: DicomWebOptions) -> str:
    try:
        phrase = HTTPStatus(rsp.status_code).phrase
    except ValueError:
        phrase = rsp.reason or ""
    text = f"HTTP {rsp.status_code} {phrase}".rstrip()
    if rsp.status_code in (401, 403):
        used = (f"the bearer token of token_file {opts.token_file}" if opts.token_file else
                f"the user:password of basic_auth_file {opts.basic_auth_file}" if opts.basic_auth_file else
                "no credentials (none configured)")
        text += f": the server refused {used}"
    return text


def _response_dataset(rsp: requests.Response | None) -> pydicom.Dataset | None:
    """A STOW-RS response body in DICOM JSON, or None when there is none."""
    if rsp is None or not rsp.content or "json" not in rsp.headers.get("Content-Type", ""):
        return None
    try:
        return pydicom.Dataset.from_json(rsp.json())
    except ValueError:
        return None


def send_files(url: str, opts: DicomWebOptions, paths: list[Path]) -> list[SendResult]:
    """STOW-RS `paths` to `url` in one request, then confirm each by QIDO-RS; one result per path.

    A result is ok (status 0x0000, or the Warning Reason the server gave) only when QIDO-RS finds
    the instance. A failed request fails every path with the same reason; a Failure Reason in the
    response fails that instance with the reason as its status.
    """
    where = url.strip().rstrip("/")
    datasets: list[tuple[int, pydicom.Dataset]] = []
    results: list[SendResult | None] = [None] * len(paths)
    for i, p in enumerate(paths):
        try:
            datasets.append((i, pydicom.dcmread(p)))
        except (OSError, ValueError, InvalidDicomError) as exc:
            results[i] = SendResult(p, None, f"cannot read {p.name}: {getattr(exc, 'strerror', None) or 'not DICOM'}")
    if not datasets:
        return results  # type: ignore[return-value]
    answers: list[int] = []
    with session(opts, answers) as http:
        return _store_and_confirm(client(where, opts, http), opts, paths, datasets, results, answers)


def _store_and_confirm(c: DICOMwebClient, opts: DicomWebOptions, paths: list[Path],
                       datasets: list[tuple[int, pydicom.Dataset]], results: list[SendResult | None],
                       answers: list[int]) -> list[SendResult]:
    where = c.base_url
    try:
        body = c.store_instances([ds for _, ds in datasets])
    except requests.HTTPError as exc:             # 409 and 4xx/5xx; a 409 carries per-instance reasons
        body = _response_dataset(exc.response)
        if body is None or "FailedSOPSequence" not in body:
            return _all_failed(paths, results, f"{where}: STOW-RS: {_why(exc, opts)}")
    except (requests.RequestException, StowError, ValueError) as exc:
        return _all_failed(paths, results, f"{where}: STOW-RS: {_why(exc, opts)}")
    http_code = answers[-1] if answers else 0
    failed = {str(it.get("ReferencedSOPInstanceUID", "")): it for it in body.get("FailedSOPSequence", [])}
    warned = {str(it.get("ReferencedSOPInstanceUID", "")): it for it in body.get("ReferencedSOPSequence", [])}
    for i, ds in datasets:
        uid = str(ds.SOPInstanceUID)
        if uid in failed:
            code = _code(failed[uid], FAILURE_REASON)
            code = None if code is not None and status.is_success(code) else code   # never "sent" from here
            what = f"0x{code:04X} ({failure_meaning(code)})" if code is not None else "no failure reason given"
            results[i] = SendResult(paths[i], code, f"{where}: STOW-RS refused the instance"
                                    f" (HTTP {http_code}): failure reason {what}")
            continue
        try:
            found = c.search_for_instances(study_instance_uid=str(ds.StudyInstanceUID), fields=["SOPInstanceUID"],
                                           search_filters={"SOPInstanceUID": uid})
        except (requests.RequestException, StowError, ValueError) as exc:
            results[i] = SendResult(paths[i], None, f"{where}: QIDO-RS check after STOW-RS: {_why(exc, opts)}")
            continue
        if any(uid in (m.get("00080018", {}).get("Value") or []) for m in found):
            warning = _code(warned.get(uid), WARNING_REASON)
            results[i] = SendResult(paths[i], warning if warning and status.is_success(warning) else status.SUCCESS)
        else:
            results[i] = SendResult(paths[i], None, f"{where}: STOW-RS answered HTTP {http_code} but QIDO-RS does"
                                    " not find the instance: not stored")
    return results  # type: ignore[return-value]


def _code(item: pydicom.Dataset | None, tag: int) -> int | None:
    if item is None or tag not in item or item[tag].value in (None, ""):
        return None
    try:
        return int(item[tag].value)
    except (TypeError, ValueError):
        return None


def _all_failed(paths: list[Path], results: list[SendResult | None], error: str) -> list[SendResult]:
    return [r if r is not None else SendResult(p, None, error) for p, r in zip(paths, results)]
