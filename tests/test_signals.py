"""SIGINT and SIGHUP stop the worker as SIGTERM does: no new jobs, the running job finishes (or is
cancelled with --on-exit cancel), every owed answer is sent, exit 0, and never a traceback.

A host's Ctrl-C reaches every process of its group, the worker included; a closed terminal sends
SIGHUP. Before, either one killed the worker mid-job (KeyboardInterrupt, exit -6 / -1, no answers).
"""

from __future__ import annotations

import signal
import time

import pytest

LONG = {"model_id": "tiny-sd15", "prompt": "long", "steps": 150, "width": 64, "height": 64, "seed": 1}
SHORT = {"model_id": "tiny-sd15", "prompt": "short", "steps": 12, "width": 64, "height": 64, "seed": 2}

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")


@pytest.fixture(autouse=True)
def _stop_signals_not_ignored():
    """Start each worker with SIGINT and SIGHUP at their defaults. A signal ignored when the worker
    starts stays ignored (on purpose, see the nohup test), and a pytest that a non-interactive shell
    runs in the background (`cmd &`) inherits SIGINT ignored: its workers would never see the SIGINT
    these tests send, and the test would wait out its timeout. (Handlers set here are reset to the
    default in the child on exec; an ignored signal would not be.)"""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    for s, handler in saved.items():
        if handler is not None:
            signal.signal(s, handler)


def _stop_mid_job(w, sig: signal.Signals, first: dict) -> dict[str, str | None]:
    """Start a job and queue one behind it, signal the worker once the first runs; the answers by request id."""
    w.send({"type": "inference.text2img", "request_id": "j1", "data": first})
    w.send({"type": "inference.text2img", "request_id": "j2", "data": SHORT})  # waits in the queue
    w.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "j1", timeout=300)
    w.proc.send_signal(sig)
    assert w.proc.wait(300) == 0
    w.close()
    answers: dict[str, str | None] = {}
    for m in w.pending:
        if m.get("type") == "response":
            assert m["request_id"] not in answers, f"answered twice: {m}"
            answers[m["request_id"]] = m.get("error_code")
    err = w.stderr()
    for bad in ("Traceback", "KeyboardInterrupt", "terminate called"):
        assert bad not in err, err[-3000:]
    assert f"shutting down ({sig.name.lower()})" in err
    w.assert_pure_stdout()
    return answers


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_stop_signal_finishes_running_job_and_answers_queued_one(spawn, sig) -> None:
    w = spawn()
    answers = _stop_mid_job(w, sig, {**LONG, "steps": 12})
    assert answers == {"j1": None, "j2": "shutting_down"}  # j1 finished (success), j2 never started


def test_sigint_with_on_exit_cancel_cancels_running_job(spawn) -> None:
    w = spawn("--on-exit", "cancel")
    answers = _stop_mid_job(w, signal.SIGINT, LONG)
    assert answers == {"j1": "cancelled", "j2": "shutting_down"}



def test_sighup_ignored_at_start_stays_ignored(spawn) -> None:
    """Started under nohup (SIGHUP ignored), a hangup does not stop the worker."""
    import sys

    code = "import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); from sdworker.__main__ import main; sys.exit(main(sys.argv[1:]))"
    w = spawn(cmd=[sys.executable, "-c", code])
    w.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)  # a handled SIGHUP would have stopped the worker by now (its main loop wakes every 0.25 s)
    r = w.call("system.ping", request_id="after-hup")
    assert r["success"] and w.proc.poll() is None
    assert w.close() == 0
    assert "shutting down (eof)" in w.stderr()
