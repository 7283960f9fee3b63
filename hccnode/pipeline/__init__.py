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

__all__ = ["Analysis", "NotApplicable", "StudyError", "analyze_study"]


def __getattr__(name: str):
    # Lazy: `hccnode.pipeline.commands` is imported by the CLI in the serving process, which must
    # not load the analysis libraries (SimpleITK, highdicom, matplotlib); workers load them.
    if name in ("Analysis", "analyze_study"):
        from hccnode.pipeline import driver
        return getattr(driver, name)
    if name in ("StudyError", "NotApplicable"):
        from hccnode.pipeline import study
        return getattr(study, name)
    raise AttributeError(f"module 'hccnode.pipeline' has no attribute {name!r}")
