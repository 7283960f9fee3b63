"""pynetdicom's reactor loops kept prompt while instances arrive (hccnode.net.polling)."""

from __future__ import annotations

import time
import types

import pynetdicom.association
import pynetdicom.dul
import pytest

from hccnode.net import polling


@pytest.fixture
def clock(monkeypatch):
    """polling's view of time: a clock the test moves, and the sleeps it asked for."""
    fake = types.SimpleNamespace(now=1000.0, slept=[])
    monkeypatch.setattr(polling, "time", types.SimpleNamespace(monotonic=lambda: fake.now,
                                                               sleep=fake.slept.append))
    monkeypatch.setattr(polling, "_last_store", float("-inf"))
    return fake


def test_the_loops_one_ms_sleep_is_cut_only_while_instances_arrive(clock):
    polling.sleep(0.001)                       # idle since the start: as pynetdicom has it
    polling.stored(alone=True)
    clock.now += polling.BUSY_SECONDS / 2
    polling.sleep(0.001)                       # a C-STORE a moment ago: prompt
    clock.now += polling.BUSY_SECONDS
    polling.sleep(0.001)                       # quiet again: back to pynetdicom's sleep
    assert clock.slept == [0.001, polling.FAST_SECONDS, 0.001]


def test_with_other_associations_open_the_loops_keep_pynetdicom_s_sleep(clock):
    """Several associations keep the processors busy: prompter loops would only take from them."""
    polling.stored(alone=True)
    polling.sleep(0.001)
    polling.stored(alone=False)                # a second association started sending
    polling.sleep(0.001)
    assert clock.slept == [polling.FAST_SECONDS, 0.001]


def test_other_sleeps_are_left_as_pynetdicom_has_them(clock):
    polling.stored(alone=True)
    for seconds in (0.0001, 0.01, 0.1):        # its short waits, its shutdown pauses
        polling.sleep(seconds)
    assert clock.slept == [0.0001, 0.01, 0.1]


def test_install_gives_both_loops_the_prompt_sleep_and_everything_else_of_time(monkeypatch):
    for module in (pynetdicom.dul, pynetdicom.association):
        monkeypatch.setattr(module, "time", time)   # put back after the test
    assert polling.install() and polling.install()   # twice: no harm
    for module in (pynetdicom.dul, pynetdicom.association):
        assert module.time.sleep is polling.sleep
        assert module.time.monotonic is time.monotonic and module.time.time is time.time


def test_install_changes_nothing_where_pynetdicom_no_longer_imports_time(monkeypatch):
    monkeypatch.setattr(pynetdicom.dul, "time", types.SimpleNamespace(sleep=time.sleep))
    monkeypatch.setattr(pynetdicom.association, "time", time)
    assert polling.install() is False
    assert pynetdicom.association.time is time
