"""SIGINT/SIGTERM handling shared by Flow, supervisors, ``plait dev`` and the CLI."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from plait.stopping import on_signals, stop_on_signals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_sets_stop_and_the_old_handler_comes_back(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with stop_on_signals() as stop:
        os.kill(os.getpid(), sig)
        assert stop.wait(5)
    assert signal.getsignal(sig) is before


def test_an_action_sees_which_signal() -> None:
    seen: list[signal.Signals] = []
    with on_signals(seen.append):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
    assert seen == [signal.SIGTERM, signal.SIGINT]


def test_outside_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def body() -> None:
        with stop_on_signals() as stop:
            seen.append((signal.getsignal(signal.SIGTERM), stop.is_set()))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(5)
    assert seen == [(before, False)]
