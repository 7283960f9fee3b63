"""The status page as one self-contained HTML document: no scripts, no external assets.

Every value from the database goes through `esc()` (html.escape, quotes included), so a
series description or an error text cannot add markup.
"""

from __future__ import annotations

from html import escape
from typing import Any, Iterable

REFRESH_SECONDS = 30

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;margin:.3em 0}th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}.uid{font-family:monospace;font-size:.9em}.muted{color:#666}
.ok{color:#0a6a0a;font-weight:bold}.degraded,.failed{color:#a40000;font-weight:bold}
ul{margin:.2em 0;padding-left:1.2em}
"""


def esc(value: Any) -> str:
    """Text for HTML content or a quoted attribute; None is shown as an em dash."""
    return "\u2014" if value is None or value == "" else escape(str(value), quote=True)


def _table(cls: str, headers: Iterable[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="{cls} muted">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{esc(k)}: {esc(v)}" for k, v in sorted(counts.items())) or "none"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "\u2014"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d} d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _dicom_datetime(da: str | None, tm: str | None) -> str:
    """DICOM DA 'YYYYMMDD' and TM 'HHMMSS.ffff' as '2026-01-01 08:00'; other forms shown as received."""
    da, tm = (da or "").strip(), (tm or "").strip()
    if len(da) == 8 and da.isdigit():
        da = f"{da[:4]}-{da[4:6]}-{da[6:]}"
    if len(tm) >= 4 and tm[:4].isdigit():
        tm = f"{tm[:2]}:{tm[2:4]}"
    return esc(f"{da} {tm}".strip())


def _phases(phases: list[dict]) -> str:
    if not phases:
        return '<span class="muted">not decided</span>'
    items = []
    for p in phases:
        kind = esc(p["kind"]) + (f" ({esc(p['phase'])})" if p.get("phase") and p["phase"] not in p["kind"] else "")
        items.append(f'<li class="phase" data-kind="{esc(p["kind"])}">#{esc(p["series_number"])}'
                     f' {esc(p["series_description"])}: <b>{kind}</b> {p["confidence"]:.2f}</li>')
    return f"<ul>{''.join(items)}</ul>"


def _series(series: list[dict]) -> str:
    return "<ul>" + "".join(f'<li>#{esc(s["series_number"])} {esc(s["modality"])} {esc(s["series_description"])}'
                            f' <span class="muted">({esc(s["instances"])})</span></li>' for s in series) + "</ul>"


def _job(job: dict | None) -> str:
    if job is None:
        return '<span class="job-state" data-state="none">not queued</span>'
    text = f'<span class="job-state {esc(job["state"])}" data-state="{esc(job["state"])}">{esc(job["state"])}</span>'
    text += f' <span class="muted">#{esc(job["id"])}, {esc(job["reason"])}, attempt {esc(job["attempts"])}' \
            f'/{esc(job["max_attempts"])}</span>'
    if job.get("error"):  # a not_applicable job's reason is no failure: the study is not for this analysis
        cls = "muted not-applicable" if job["state"] == "not_applicable" else "failed"
        text += f'<br><span class="{cls}">{esc(job["error"])}</span>'
    return text


def _study_rows(studies: list[dict]) -> list[str]:
    rows = []
    for s in studies:
        outputs = _counts(s["outputs"]) if s["outputs"] else "none"
        rows.append(
            f'<tr class="study" data-study-uid="{esc(s["study_uid"])}">'
            f'<td class="uid">{esc(s["study_uid"])}</td><td>{_dicom_datetime(s["study_date"], s["study_time"])}</td>'
            f'<td>{esc(s["study_description"])}</td><td>{esc(s["last_received"])}</td>'
            f'<td>{_series(s["series"])}</td><td>{_phases(s["phases"])}</td><td>{_job(s["job"])}</td>'
            f"<td>{outputs}</td></tr>")
    return rows


def _outbox_rows(rows: list[dict]) -> list[str]:
    return [f'<tr><td>{esc(r["id"])}</td><td>{esc(r["destination"])}</td><td class="uid">{esc(r["study_uid"])}</td>'
            f'<td class="uid">{esc(r["sop_uid"])}</td><td>{esc(r["state"])}</td><td>{esc(r["attempts"])}</td>'
            f'<td>{esc(r["last_status"])}</td><td>{esc(r["last_error"])}</td></tr>' for r in rows]


def _lab_message(m: dict | None) -> str:
    if m is None:
        return '<span class="muted">none</span>'
    text = f'{esc(m["received_at"])} {esc(m["message_type"])} from {esc(m["sending_facility"])}: {esc(m["outcome"])}'
    return text + (f' <span class="muted">({esc(m["reason"])})</span>' if m.get("reason") else "")


def render(snap: dict[str, Any]) -> str:
    """The page for a `snapshot.collect()` result."""
    node, h, jobs, out, labs, ingest = (snap[k] for k in ("node", "health", "jobs", "outbox", "labs", "ingest"))
    reasons = "".join(f"<li>{esc(r)}</li>" for r in h["reasons"])
    dests = ", ".join(esc(d) for d in node["destinations"]) or "none configured"
    lab_state = "listening on port " + esc(node["hl7_port"]) if labs["hl7_enabled"] else "HL7 listener disabled"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hccnode status: {esc(h["status"])}</title>
<style>{STYLE}</style></head>
<body>
<h1>hccnode {esc(node["version"])} <span id="health" class="{esc(h["status"])}" data-status="{esc(h["status"])}">{esc(h["status"])}</span></h1>
<ul id="health-reasons">{reasons}</ul>
<p>AE {esc(node["ae_title"])}, DICOM port {esc(node["dicom_port"])}, up {_duration(node["uptime_seconds"])}
since {esc(node["started_at"])}; {esc(node["workers"])} worker(s); sends to {dests}.
<span class="muted">Generated {esc(snap["generated_at"])}, refreshes every {REFRESH_SECONDS} s.
JSON: <a href="/health">/health</a>, <a href="/api/status">/api/status</a>.</span></p>

<h2>Recent studies</h2>
<p class="muted">Instances stored: {esc(ingest["instances"])}, last received {esc(ingest["last_received"])};
quarantined in the last 24 h: {esc(ingest["quarantined_last_24h"])}.</p>
{_table("studies", ["Study UID", "Study date", "Description", "Last received", "Series (instances)",
                    "Phase decisions", "Analysis job", "Outputs"], _study_rows(snap["studies"]), "No studies yet.")}

<h2>Jobs</h2>
<p id="job-counts">{_counts(jobs["counts"])}</p>
{_table("failed-jobs", ["Job", "Study UID", "Attempts", "Finished", "Error"],
        [f'<tr><td>{esc(j["id"])}</td><td class="uid">{esc(j["study_uid"])}</td><td>{esc(j["attempts"])}</td>'
         f'<td>{esc(j["finished_at"])}</td><td>{esc(j["error"])}</td></tr>' for j in jobs["failed_studies"]],
        "No study whose latest analysis failed.")}

<h2>Outbox</h2>
<p id="outbox-counts">{_counts(out["counts"])}; oldest waiting {_duration(out["oldest_waiting_seconds"])}</p>
{_table("outbox-failed", ["Row", "Destination", "Study UID", "SOP Instance UID", "State", "Attempts", "Last status",
                          "Last error"], _outbox_rows(out["failed"] + out["retrying"]), "No failed or retried sends.")}

<h2>Lab feed</h2>
<p>{lab_state}; results stored: {esc(labs["results_stored"])}; last CSV import: {esc(labs["last_csv_import"])}.</p>
<table class="labs"><tbody>
<tr><th>Last message received</th><td id="lab-last-received">{_lab_message(labs["last_received"])}</td></tr>
<tr><th>Last accepted</th><td id="lab-last-accepted">{_lab_message(labs["last_accepted"])}</td></tr>
<tr><th>Last rejected</th><td id="lab-last-rejected">{_lab_message(labs["last_rejected"])}</td></tr>
<tr><th>Messages in the last 24 h</th><td>{_counts(labs["messages_last_24h"])}</td></tr>
</tbody></table>

<p class="muted">{esc(snap["research_use"])}</p>
</body></html>
"""
