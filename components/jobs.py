"""Running heavy work for a session: one job per session, a global concurrency limit, and errors
turned into readable messages (never a stack trace in the page).

- A second click while the session's job runs is answered at once with "... is still running".
- Jobs of different sessions wait for a free slot (BIP_CONCURRENCY); the progress bar says so.
- A job that uses a shared original model holds that model's lock: scoring puts hooks on it, and
  hooks would also fire on another session's forward pass. The locks are plain (not thread-owned)
  locks: Gradio may resume a streaming job (chat) on another worker thread than the one it started on.
"""
from __future__ import annotations

import functools
import inspect
import logging
import threading
import weakref
from contextlib import contextmanager

import gradio as gr

from bip_core.errors import BipError

from .session import SessionClosed

log = logging.getLogger("bip_studio")

_slots: threading.BoundedSemaphore | None = None
_model_locks: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()
_model_locks_guard = threading.Lock()


def configure(concurrency: int) -> None:
    global _slots
    _slots = threading.BoundedSemaphore(max(1, int(concurrency)))


def model_lock(model) -> threading.Lock:
    with _model_locks_guard:
        lock = _model_locks.get(model)
        if lock is None:
            lock = _model_locks[model] = threading.Lock()
        return lock


def _acquire(lock, session) -> None:
    """Wait for `lock` (a slot or a model), giving up if the session's tab closes meanwhile."""
    while not lock.acquire(timeout=0.25):
        session.check_open()


def busy_message(what: str) -> str:
    return (f"{what} is still running in this session. Wait for it to finish (the progress bar shows "
            "how far it is), then try again.")


def check_idle(session) -> None:
    """Refuse a second job while the session runs one."""
    if session is not None and session.busy:
        raise gr.Error(busy_message(session.busy), title="Busy", print_exception=False)


def precheck(session, needs: str | None = None) -> None:
    """The fast check wired before a heavy job: not busy, and what the job needs is there. Its
    gr.Error is a toast only; the job's outputs are left as they are (no error badges)."""
    check_idle(session)
    if needs:
        REQUIREMENTS[needs](session)


@contextmanager
def heavy(session, what: str, progress=None, originals=()):
    """Run a job for `session`: refuse if it already runs one, then wait for a free slot."""
    if session is None:
        raise gr.Error("This session has no state yet: reload the page.", print_exception=False)
    if not session.begin(what):
        raise gr.Error(busy_message(session.busy or "Another job"), title="Busy", print_exception=False)
    try:
        slots = _slots or threading.BoundedSemaphore(1)
        if not slots.acquire(blocking=False):
            if progress is not None:
                progress(0, desc=f"{what}: waiting for another user's job to finish ...")
            _acquire(slots, session)  # a closed tab stops waiting
        try:
            session.check_open()
            locks = []
            try:
                for lock in [model_lock(m) for m in originals if m is not None]:
                    _acquire(lock, session)
                    locks.append(lock)
                yield
            finally:
                for lock in reversed(locks):
                    lock.release()
        finally:
            slots.release()
    finally:
        session.end()


def cancellable(session, report):
    """Wrap a progress callback: a job whose tab was closed stops at its next report (SessionClosed)."""
    def checked(*args, **kwargs):
        session.check_open()
        return report(*args, **kwargs)
    return checked


# Library messages name API arguments; in the app the same thing is a control with a label.
UI_WORDS = {
    "allow removing whole attention sub-blocks (allow_empty_attention=True)":
        "tick 'Allow removing whole attention sub-blocks'",
    "(allow_empty_attention=True)": "(tick 'Allow removing whole attention sub-blocks')",
}


def ui_wording(message: str) -> str:
    for api, ui in UI_WORDS.items():
        message = message.replace(api, ui)
    return message


def friendly(err: BaseException) -> gr.Error:
    """The message a user sees for an exception."""
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, SessionClosed):
        log.info("job cancelled: %s", err)
        return gr.Error(str(err), title="Cancelled", print_exception=False)
    if isinstance(err, BipError):
        return gr.Error(ui_wording(str(err)), print_exception=False)
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return gr.Error("Out of memory. Try fewer calibration samples, a shorter sequence length, or a "
                        "smaller model. The app is still running.", title="Out of memory")
    if isinstance(err, ValueError):
        return gr.Error(f"Invalid input: {err}", print_exception=False)
    log.exception("unexpected error in a UI handler", exc_info=err)
    return gr.Error(f"Something went wrong ({type(err).__name__}: {err}). The app is still running; "
                    "the details are in the server log.", title="Unexpected error")


def _shown(err: BaseException, args) -> gr.Error:
    """The readable error, remembered by the session (the handlers' first argument) for its status line."""
    shown = friendly(err)
    if args and hasattr(args[0], "last_error"):
        args[0].last_error = shown.message
    return shown


def ui_errors(fn):
    """Decorator for handlers: any exception becomes a gr.Error with a readable message."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 -- every error is shown, none is a dead page
                raise _shown(err, args) from err
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise _shown(err, args) from err
    return wrapper


def error_line(session) -> str:
    """A failed job's status line: the reason stays there (the toast goes after a few seconds)."""
    reason = getattr(session, "last_error", None) or "see the message above"
    return f"**Not done:** {reason}"


def require_model(session):
    if session is None or session.loaded is None:
        expired = session is not None and session.expired
        raise gr.Error("This session was idle and its models were freed. Load the model again (step 1)."
                       if expired else "Load a model first (step 1, 'Model').", print_exception=False)
    return session.loaded


def _need(value, message: str):
    if value is None:
        raise gr.Error(message, print_exception=False)
    return value


def require_scores(session):
    require_model(session)
    return _need(session.active_scores, "Score the model first (step 2, 'Score & tune').")


def require_plan(session):
    require_scores(session)
    return _need(session.plan, "Make a plan first (step 2: choose a ratio).")


def require_pruned(session):
    require_model(session)
    return _need(session.pruned, "Prune the model first (step 3, 'Prune').")


REQUIREMENTS = {"model": require_model, "scores": require_scores, "plan": require_plan, "pruned": require_pruned}
