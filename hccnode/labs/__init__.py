"""Lab results: HL7 v2 ORU^R01 over MLLP and CSV, matched to scan time, with derived indices.

Importing this package registers its tables (labs, labs_raw, lab_usage) with the Store.
"""

from hccnode.labs import requeue, store  # noqa: F401  (table schemas)
