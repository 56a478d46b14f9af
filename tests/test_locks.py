"""The adapter gate (`llaca.model.locks.AdapterGate`): generations that need different adapters take turns."""

from __future__ import annotations

import threading
import time

import pytest

from llaca.model.locks import AdapterGate


def test_gate_lets_one_adapter_share_and_makes_another_wait():
    gate, active, log = AdapterGate(), [], []
    activate = active.append
    inside = threading.Event()
    release = threading.Event()

    def hold(mode):
        with gate.use(mode, activate):
            log.append(("in", mode, tuple(active)))
            inside.set()
            release.wait(5)
        log.append(("out", mode))

    a1 = threading.Thread(target=hold, args=("g1",))
    a1.start()
    inside.wait(5)
    with gate.use("g1", activate):  # the same adapter: no wait, no switch
        assert gate.holders == 2 and active == ["g1"]
    b = threading.Thread(target=hold, args=("g2",))
    b.start()
    time.sleep(0.2)
    assert active == ["g1"] and ("in", "g2", ("g1",)) not in log  # g2 waits for g1's generation
    late = []

    def late_g1():
        with gate.use("g1", activate):
            late.append(tuple(active))

    c = threading.Thread(target=late_g1)
    c.start()
    time.sleep(0.2)
    assert late == []  # first come, first served: a later g1 waits behind the waiting g2
    release.set()
    for t in (a1, b, c):
        t.join(5)
    assert late == [("g1", "g2", "g1")] and gate.switches == 3 and gate.holders == 0


def test_gate_stays_usable_when_a_switch_fails():
    gate = AdapterGate()

    def broken(mode):
        raise RuntimeError("no such adapter")

    with pytest.raises(RuntimeError):
        with gate.use("g9", broken):
            pass
    with gate.use("g1", lambda m: None):
        assert gate.holders == 1
