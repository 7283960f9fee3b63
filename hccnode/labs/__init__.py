"""Lab results: HL7 v2 ORU^R01 over MLLP and CSV, matched to scan time, with derived indices.

Their tables (labs, labs_raw, lab_usage) and every statement on them are in hccnode.store.labs.
"""
