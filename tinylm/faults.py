"""Being stopped: signals that end a long job at a safe point, and deliberate kills that test it.

SIGINT (Ctrl-C) and SIGTERM (what schedulers send) arrive at any instruction. Inside
`signals_deferred` (training) they only record themselves; the job reads `stop_requested()` where
stopping is safe (a step boundary), saves, and raises `Stopped`. Elsewhere `stop_on_sigterm` makes
SIGTERM raise `Stopped` at once, as Ctrl-C raises KeyboardInterrupt, so `finally` blocks run and files
written atomically stay whole. `Stopped` is a KeyboardInterrupt, so code that handles Ctrl-C handles both.

TINYLM_KILL_AT=POINT[:N] makes the process SIGKILL itself the Nth time (default: the first) it reaches
`kill_point(POINT)`: no handler, no `finally`, as when the OOM killer or a scheduler's hard limit strikes.
Tests use it to check that a kill between two writes leaves something a re-run can continue from.
TINYLM_KILL_SIGNAL=TERM (or INT) sends that signal instead, to test a stop at a chosen moment.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections import Counter

KILL_AT, KILL_SIGNAL = "TINYLM_KILL_AT", "TINYLM_KILL_SIGNAL"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_reached: Counter = Counter()
_requested: int | None = None  # the first signal received while deferred
_deferring = 0  # 1 while signals_deferred holds the handlers (a nested call leaves them to the outer one)


def kill_point(name: str) -> None:
    """Signal this process (SIGKILL unless TINYLM_KILL_SIGNAL says) if TINYLM_KILL_AT names this point and
    this is the Nth time it is reached."""
    spec = os.environ.get(KILL_AT)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point == name:
        _reached[name] += 1
        if _reached[name] == int(nth or 1):
            sent = os.environ.get(KILL_SIGNAL, "KILL").upper()
            os.kill(os.getpid(), signal.Signals[sent if sent.startswith("SIG") else f"SIG{sent}"])


class Stopped(KeyboardInterrupt):
    """A stop signal ended the job; `exit_code` is the shell's convention, 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return interrupt.exit_code if isinstance(interrupt, Stopped) else 128 + signal.SIGINT


def stop_requested() -> int | None:
    """The signal number of a SIGINT or SIGTERM received inside `signals_deferred`, else None."""
    return _requested


def _record(signum, frame) -> None:
    global _requested
    if _requested is None:  # a second signal while saving changes nothing: the save completes
        _requested = signum


def signals_deferred(function):
    """Run `function` with SIGINT and SIGTERM recorded for `stop_requested()` instead of interrupting it.

    Only the main thread can set signal handlers; elsewhere the function runs with the handlers it finds."""
    @functools.wraps(function)
    def deferred(*args, **kwargs):
        global _requested, _deferring
        if threading.current_thread() is not threading.main_thread() or _deferring:
            return function(*args, **kwargs)
        previous = {s: signal.signal(s, _record) for s in STOP_SIGNALS}
        _requested, _deferring = None, 1

        def restore() -> int | None:
            global _requested, _deferring
            for s, handler in previous.items():
                signal.signal(s, handler)
            late, _requested, _deferring = _requested, None, 0
            return late
        try:
            result = function(*args, **kwargs)
        except BaseException:
            restore()  # the job is ending anyway (by Stopped, when a signal ended it)
            raise
        late = restore()
        if late is not None:  # it came after the job's last safe point; its work is saved, so obey it now
            signal.raise_signal(late)
        return result
    return deferred


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_sigterm():
    """Inside, SIGTERM raises `Stopped` where the program is, as SIGINT raises KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
