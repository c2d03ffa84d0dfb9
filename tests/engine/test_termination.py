"""SIGTERM stops a driver the way Ctrl-C does: a clean stop, not Ray's crash report."""

from __future__ import annotations

import os
import signal

import pytest


def test_sigterm_raises_terminated_only_while_installed():
    from berg_scale.engine.termination import Terminated, sigterm_as_interrupt, sigterm_received

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # let the interpreter run the handler
        pytest.fail("SIGTERM did not stop the block")
    assert sigterm_received()
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_cli_exits_143_on_sigterm_and_130_on_ctrl_c(monkeypatch, capsys):
    from berg_scale import cli
    from berg_scale.commands import status
    from berg_scale.engine import termination

    def stop_with(exc):
        def run(args):
            raise exc
        return run

    monkeypatch.setattr(termination._received, "is_set", lambda: False)
    monkeypatch.setattr(status, "run", stop_with(KeyboardInterrupt()))
    assert cli.main(["status", "anything"]) == 130
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.setattr(status, "run", stop_with(termination.Terminated()))
    assert cli.main(["status", "anything"]) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
