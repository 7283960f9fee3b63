"""Orthanc Python plugin: send stable liver CT/MR studies to hccnode.

When Orthanc marks a study stable, the plugin picks the series that match the rules below and
asks Orthanc to C-STORE them to the hccnode modality. Only image series of the listed
modalities go (never SR, SEG or the node's own outputs), so the results the node sends back
to this Orthanc do not start a loop; a study that becomes stable again re-sends identical
instances, which the node acknowledges as duplicates without re-analysis.

Configuration, in Orthanc's JSON (every key optional but "Modality"):

    "PythonScript": "/path/to/hccnode_route.py",
    "HccNode": {
      "Modality": "hccnode",                 // a name in DicomModalities
      "Modalities": ["CT", "MR"],            // series modalities to send
      "DescriptionPattern": "(?i)liver|hepat|hcc|abdom|leber|foie|fegato|higado",
                                             // matched against study and series descriptions,
                                             // protocol name and body part; "" sends every study
      "ExcludeManufacturers": ["hccnode"]    // series written by these are never sent
    }

Runs inside Orthanc's embedded Python: standard library and the `orthanc` module only.
"""

import collections
import json
import re

import orthanc

DEFAULTS = {
    "Modality": "hccnode",
    "Modalities": ["CT", "MR"],
    "DescriptionPattern": "(?i)liver|hepat|hcc|abdom|leber|foie|fegato|higado",
    "ExcludeManufacturers": ["hccnode"],
}


def _config():
    cfg = dict(DEFAULTS)
    cfg.update(json.loads(orthanc.GetConfiguration()).get("HccNode", {}))
    return cfg


CONFIG = _config()
PATTERN = re.compile(CONFIG["DescriptionPattern"]) if CONFIG["DescriptionPattern"] else None


def _get(uri):
    return json.loads(orthanc.RestApiGet(uri))


def series_to_send(study_id):
    """{Orthanc series id: instance count} of the study's series that match the rules (empty when
    the study does not)."""
    study = _get("/studies/%s" % study_id)
    texts = [study.get("MainDicomTags", {}).get("StudyDescription", "")]
    chosen = {}
    for series_id in study.get("Series", []):
        tags = _get("/series/%s" % series_id).get("MainDicomTags", {})
        texts += [tags.get(k, "") for k in ("SeriesDescription", "ProtocolName", "BodyPartExamined")]
        if tags.get("Modality") not in CONFIG["Modalities"]:
            continue
        instances = _get("/series/%s/instances" % series_id)
        maker = instances[0].get("MainDicomTags", {}).get("Manufacturer", "") if instances else ""
        if not maker and instances:
            maker = _get("/instances/%s/simplified-tags" % instances[0]["ID"]).get("Manufacturer", "")
        if maker.lower() in [m.lower() for m in CONFIG["ExcludeManufacturers"]]:
            continue
        chosen[series_id] = len(instances)
    if PATTERN is not None and not any(PATTERN.search(t or "") for t in texts):
        return {}
    return chosen


# What was last sent per study: (series id, instance count) pairs. The node's results arriving in
# the study make it stable again; its images, unchanged, are not sent a second time. Kept in memory:
# after an Orthanc restart a study may be sent once more, which the node stores as duplicates.
# Bounded: the oldest studies are forgotten first.
SENT = collections.OrderedDict()
SENT_MAX = 10000


def on_change(change_type, level, resource_id):
    if change_type != orthanc.ChangeType.STABLE_STUDY:
        return
    try:
        series = series_to_send(resource_id)
        if not series:
            orthanc.LogWarning("hccnode: study %s does not match the routing rules, not sent" % resource_id)
            return
        signature = tuple(sorted(series.items()))
        if SENT.get(resource_id) == signature:
            orthanc.LogWarning("hccnode: study %s unchanged since it was sent, not sent again" % resource_id)
            return
        SENT[resource_id] = signature
        SENT.move_to_end(resource_id)
        while len(SENT) > SENT_MAX:
            SENT.popitem(last=False)
        body = json.dumps({"Resources": sorted(series), "Synchronous": False})
        job = json.loads(orthanc.RestApiPost("/modalities/%s/store" % CONFIG["Modality"], body))
        orthanc.LogWarning("hccnode: study %s, %d series sent to %s (job %s)"
                           % (resource_id, len(series), CONFIG["Modality"], job.get("ID")))
    except Exception as exc:  # never let a routing error disturb Orthanc
        orthanc.LogError("hccnode: routing study %s failed: %s" % (resource_id, exc))


orthanc.RegisterOnChangeCallback(on_change)
