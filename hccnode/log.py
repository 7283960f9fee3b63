"""Structured, PHI-free logging: one line per event, `time level event key=value ...`.

Callers pass identifiers that are not PHI (UIDs, AE titles, counts, hashed patient keys).
Patient names, IDs and birth dates must never be passed here; `event()` refuses the field
names that usually carry them so a slip fails loudly in tests instead of leaking.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

LOGGER = logging.getLogger("hccnode")
PHI_FIELDS = frozenset({"patient_name", "patient_id", "patient_birth_date", "PatientName", "PatientID", "PatientBirthDate"})


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{t}.{int(record.msecs):03d}Z {record.levelname} {record.getMessage()}"
        if record.exc_info:
            # Only the exception type and message: tracebacks of dataset errors can quote values.
            exc = record.exc_info[1]
            line += f" exc={type(exc).__name__}:{_quote(str(exc))}"
        return line


def _quote(value: object) -> str:
    s = str(value)
    if s == "" or any(c in s for c in ' "=\n'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def event(name: str, level: int = logging.INFO, exc_info: bool = False, **fields: object) -> None:
    """Log one event: `name` like 'instance.stored', fields as key=value."""
    bad = PHI_FIELDS.intersection(fields)
    if bad:
        raise ValueError(f"refusing to log PHI fields: {sorted(bad)}")
    if not LOGGER.isEnabledFor(level):
        return
    parts = [name] + [f"{k}={_quote(v)}" for k, v in fields.items() if v is not None]
    LOGGER.log(level, " ".join(parts), exc_info=exc_info)


class _StderrHandler(logging.StreamHandler):
    """Writes each event to the `sys.stderr` of the moment, not the one at setup: a thread that
    logs after its caller swapped or closed stderr (a test harness, a daemoniser) must not fail."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup(level: str = "INFO", file: str = "") -> None:
    """Send hccnode's events to `file` (or stderr); quiet pynetdicom, whose debug output can quote datasets."""
    handler: logging.Handler = logging.FileHandler(file) if file else _StderrHandler()
    handler.setFormatter(_Formatter())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level.upper())
    LOGGER.propagate = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").handlers[:] = [handler]
    logging.getLogger("pynetdicom").propagate = False
    # dicomweb-client logs request headers at DEBUG, and its `retrying` a traceback per failed
    # request: the node's own events say what failed (hccnode.net.stow).
    for lib in ("dicomweb_client", "retrying"):
        logging.getLogger(lib).setLevel(logging.CRITICAL)
    # pydicom and highdicom warn about odd values by quoting them (a patient's name among them):
    # never shown; what matters about a file is said by the node's own messages.
    for lib in ("pydicom", "highdicom"):
        warnings.filterwarnings("ignore", module=rf"{lib}(\.|$)")
        logging.getLogger(lib).setLevel(logging.CRITICAL)
