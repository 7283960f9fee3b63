"""DIMSE status codes the node answers with (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

SUCCESS = 0x0000
# Storage Service Class failures (PS3.4 Table B.2-1).
OUT_OF_RESOURCES = 0xA700            # Refused: Out of Resources (disk full, unwritable spool, index busy)
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000           # Error: Cannot understand (unparseable header, missing UIDs)
# Storage Service Class warnings: the instance was stored.
COERCION_OF_DATA_ELEMENTS = 0xB000
ELEMENTS_DISCARDED = 0xB006
DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007

WARNINGS = frozenset({COERCION_OF_DATA_ELEMENTS, ELEMENTS_DISCARDED, DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING})


def is_success(status: int) -> bool:
    """True when the peer kept the instance: success or a storage warning."""
    return status == SUCCESS or status in WARNINGS


# A-ASSOCIATE-RJ (PS3.8 Table 9-21): result, source, diagnostic.
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PROVIDER_PRESENTATION = 0x03
DIAG_CALLING_AE_NOT_RECOGNIZED = 0x03       # with SOURCE_SERVICE_USER
DIAG_LOCAL_LIMIT_EXCEEDED = 0x02            # with SOURCE_PROVIDER_PRESENTATION
