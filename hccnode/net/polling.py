"""pynetdicom's reactor loops kept prompt while instances arrive.

pynetdicom runs two polling loops per association. The DUL thread reads PDUs from the socket and
sends the ones queued for it; the association's reactor hands each complete DIMSE message to the
handlers. When a loop finds nothing to do it sleeps 1 ms: pynetdicom's trade of CPU for latency
(the DUL's `_run_loop_delay`, discussed in pynetdicom issue #650; the reactor's is fixed). A sender
with one association waits for each C-STORE response before sending the next instance, so each
instance waits on those sleeps three times: the reactor noticing the complete request, the DUL
noticing the response queued, the DUL noticing the next request. That is about 1.5 ms per
instance on average, a quarter of the time of a 512x512 CT instance on loopback (bench/ingest.py).

`install()` gives both loops (in the receiving process) a `time` whose `sleep` is cut to
FAST_SECONDS while instances arrive over one association, i.e. while a C-STORE was received
(`stored()`) within the last BUSY_SECONDS and its association was the only one open in the
process. Otherwise the sleeps stay as pynetdicom has them: an idle open association costs what it
did, and with several associations sending, the processors are busy anyway (prompter loops took
them from the work: 256 against 283 instances/s over 4 associations, bench/ingest.py alternating).
Other sleeps (pynetdicom's 0.1 ms waits, its shutdown pauses) are left alone.
"""

from __future__ import annotations

import time
import types

import pynetdicom.association
import pynetdicom.dul

FAST_SECONDS = 0.0002   # the loops' sleep while instances arrive
BUSY_SECONDS = 0.05     # how long after a C-STORE the loops stay prompt
SLOW_SECONDS = 0.001    # pynetdicom's loop sleep: what is cut

_last_store = float("-inf")


def stored(alone: bool) -> None:
    """A C-STORE request arrived: keep the loops prompt for the next BUSY_SECONDS when its
    association is `alone` in this process; with others open, back to pynetdicom's sleep (they
    keep the processors busy, and prompter loops would only take the processors from them)."""
    global _last_store
    _last_store = time.monotonic() if alone else float("-inf")


def sleep(seconds: float) -> None:
    """`time.sleep`, with pynetdicom's 1 ms loop sleep cut to FAST_SECONDS while instances arrive."""
    if FAST_SECONDS < seconds <= SLOW_SECONDS and time.monotonic() - _last_store < BUSY_SECONDS:
        seconds = FAST_SECONDS
    time.sleep(seconds)


class _PromptTime(types.ModuleType):
    """The `time` module as pynetdicom's loops see it: everything from `time` but `sleep`."""

    sleep = staticmethod(sleep)

    def __getattr__(self, name: str):
        return getattr(time, name)


_PROMPT_TIME = _PromptTime("time")


def install() -> bool:
    """Give pynetdicom's DUL and association modules the prompt `time`; False (and nothing
    changed) when a pynetdicom version no longer imports `time` as a module name there."""
    modules = (pynetdicom.dul, pynetdicom.association)
    if not all(getattr(m, "time", None) in (time, _PROMPT_TIME) for m in modules):
        return False
    for m in modules:
        m.time = _PROMPT_TIME
    return True
