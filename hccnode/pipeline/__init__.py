"""The study pipeline: a stored study in, measurements, model results and DICOM outputs out.

    from hccnode.pipeline import analyze_study
    analysis = analyze_study(store, study_uid, destinations=["PACS@10.1.2.3:104"])
    analysis.files        # SEG, ECV map, SR, summary (Encapsulated PDF) in the data directory
    analysis.measurements # hccnode.imaging.measure.Measurement, missing ones with their reason

Modules: study (series, phase decisions, volumes), align (phases onto the reference grid),
regions (reader's and automatic ROIs), labs (values at scan time), ct / mr (markers of papers
000-003), models (model cards), driver (the whole run, outputs, outbox, audit), commands
(`hccnode analyze`). The science lives in hccnode.imaging; this package only orchestrates.
"""

from hccnode.pipeline.driver import Analysis, analyze_study
from hccnode.pipeline.study import StudyError

__all__ = ["Analysis", "StudyError", "analyze_study"]
