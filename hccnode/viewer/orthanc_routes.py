"""Orthanc Python plugin script (runs inside Orthanc, not in hccnode): the single-page fallback that
ServeFolders lacks. OHIF's router lives at /ohif; a deep URL such as
/ohif/viewer?StudyInstanceUIDs=... is not a file, so these routes answer it with OHIF's index.html
and the router takes it from there. The folder comes from the configuration's ServeFolders entry
for /ohif (hccnode.viewer.stack writes it)."""

import json
import os

try:
    import orthanc          # only inside Orthanc's Python plugin
except ImportError:         # imported elsewhere (a module walk, a linter): nothing to register
    orthanc = None

# The app's routes (OHIF 3.12: study list, the modes' /<mode> and /<mode>/<data source>).
ROUTES = ("/ohif", "/ohif/", "/ohif/(viewer|segmentation|tmtv|microscopy|localbasic)",
          "/ohif/(viewer|segmentation|tmtv|microscopy|localbasic)/(.*)")


def _register() -> None:
    dist = json.loads(orthanc.GetConfiguration())["ServeFolders"]["Folders"]["/ohif"]
    with open(os.path.join(dist, "index.html"), "rb") as f:
        index = f.read()

    def answer(output, uri, **request):
        output.AnswerBuffer(index, "text/html")

    for route in ROUTES:
        orthanc.RegisterRestCallback(route, answer)


if orthanc is not None:
    _register()
