"""Deterministic UIDs for the node's outputs (PS3.5 B.2: "2.25." + a UUID as one integer).

An output's UIDs are a name-based UUID (RFC 4122 version 5, SHA-1) of everything that decides
its content: the input instance UIDs, the ROIs (source, annotation UID and a digest of the mask),
the lab values used, the software, model-card and template versions. Re-running the same
analysis therefore gives the same SOP Instance UIDs (a retry replaces, never duplicates), and any
changed input gives new ones.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import numpy as np

# Fixed namespace for hccnode's name-based UUIDs (itself uuid5(NAMESPACE_URL, "urn:hccnode:outputs")).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:hccnode:outputs")


def canonical(value: Any) -> str:
    """A stable text form of `value` (JSON, sorted keys; arrays by digest) used as the UUID name."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"shape": list(obj.shape), "sha256": mask_digest(obj)}
    if isinstance(obj, np.generic):  # numpy scalars: as the Python number they hold
        return obj.item()
    raise TypeError(f"cannot derive a UID from a {type(obj).__name__}")


def mask_digest(mask: np.ndarray) -> str:
    """SHA-256 of a mask's shape and packed bits (so equal masks give equal digests)."""
    arr = np.ascontiguousarray(np.asarray(mask, dtype=bool))
    h = hashlib.sha256(repr(arr.shape).encode())
    h.update(np.packbits(arr).tobytes())
    return h.hexdigest()


def uid_from(*parts: Any) -> str:
    """'2.25.<decimal UUID>' for the parts (at most 44 characters, within the 64 allowed)."""
    return f"2.25.{uuid.uuid5(NAMESPACE, canonical(list(parts))).int}"

