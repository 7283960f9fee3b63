"""Orthanc Python plugin script (runs inside Orthanc, not in hccnode): the single-page fallback that
ServeFolders lacks. OHIF's router lives at /ohif; a deep URL such as
/ohif/viewer?StudyInstanceUIDs=... is not a file, so these routes answer it with OHIF's index.html
and the router takes it from there. The folder comes from the configuration's ServeFolders entry
for /ohif (hccnode.viewer.stack writes it)."""

import json
import os

import orthanc

_DIST = json.loads(orthanc.GetConfiguration())["ServeFolders"]["Folders"]["/ohif"]
with open(os.path.join(_DIST, "index.html"), "rb") as f:
    _INDEX = f.read()


def _index(output, uri, **request):
    output.AnswerBuffer(_INDEX, "text/html")


# The app's routes (OHIF 3.12: study list, the modes' /<mode> and /<mode>/<data source>).
for _route in ("/ohif", "/ohif/", "/ohif/(viewer|segmentation|tmtv|microscopy|localbasic)",
               "/ohif/(viewer|segmentation|tmtv|microscopy|localbasic)/(.*)"):
    orthanc.RegisterRestCallback(_route, _index)
