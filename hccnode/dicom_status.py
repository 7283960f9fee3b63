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


# Query/Retrieve (PS3.4 C.4.1.1.4 C-FIND, C.4.2.1.5 C-MOVE, C.4.3.1.4 C-GET): statuses the node
# receives as an SCU. Same numbers as some storage codes above, different meaning in this service.
PENDING = 0xFF00                         # a match (C-FIND) or sub-operations continuing (C-MOVE/C-GET)
PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01
CANCELLED = 0xFE00
SUBOPERATIONS_COMPLETE_WITH_FAILURES = 0xB000   # warning: some sub-operations failed or warned
QR_OUT_OF_RESOURCES = 0xA700                    # C-FIND: refused, out of resources
OUT_OF_RESOURCES_MATCHES = 0xA701               # C-MOVE/C-GET: unable to calculate number of matches
OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702         # C-MOVE/C-GET: unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS_FIRST, UNABLE_TO_PROCESS_LAST = 0xC000, 0xCFFF   # failure: unable to process


def is_pending(status: int) -> bool:
    return status in (PENDING, PENDING_OPTIONAL_KEYS_UNSUPPORTED)


def qr_meaning(status: int) -> str:
    """A Query/Retrieve status in words, for error messages."""
    names = {
        SUCCESS: "success", PENDING: "pending", PENDING_OPTIONAL_KEYS_UNSUPPORTED: "pending (optional keys not supported)",
        CANCELLED: "cancelled", SUBOPERATIONS_COMPLETE_WITH_FAILURES: "sub-operations complete, one or more failures",
        QR_OUT_OF_RESOURCES: "out of resources", OUT_OF_RESOURCES_MATCHES: "out of resources: unable to calculate matches",
        OUT_OF_RESOURCES_SUBOPERATIONS: "out of resources: unable to perform sub-operations",
        MOVE_DESTINATION_UNKNOWN: "move destination unknown",
        IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: "identifier does not match SOP class",
    }
    if status in names:
        return names[status]
    if UNABLE_TO_PROCESS_FIRST <= status <= UNABLE_TO_PROCESS_LAST:
        return "unable to process"
    return "unknown status"
