"""Per-session state: what one browser tab (or one API client) has loaded, scored, planned, pruned.

A `StudioSession` lives in a `gr.State` (one per session, created on first use). The original
model it points to is shared read-only with other sessions (components.model_store); the scores,
plan, pruned model, measurements and export files are this session's alone. `free()` drops them;
the registry calls it when the tab closes (demo.unload), when Gradio deletes the state, or when the
session has been idle longer than BIP_SESSION_TTL. A session closed while its job runs is marked
`closed`: the job stops at its next progress report (`check_open` raises SessionClosed) and the
session is freed when the job ends, so an abandoned job never holds a slot for long. When the
process exits, the folders of the sessions still open are removed too.
"""
from __future__ import annotations

import atexit
import gc
import shutil
import tempfile
import threading
import time
from pathlib import Path


MAX_SCORE_RUNS = 8  # scores runs kept for comparison; the oldest inactive one goes first
MAX_RESULT_ROWS = 200  # measurement rows kept in the Compare tab; the oldest go first
_LIVE_FOLDERS: set[Path] = set()  # the folders of sessions not freed yet (exports of hundreds of MB each)


@atexit.register
def _remove_live_folders() -> None:
    """When the app stops, remove the files of the sessions still open, as free() would have."""
    for folder in list(_LIVE_FOLDERS):
        shutil.rmtree(folder, ignore_errors=True)


class SessionClosed(Exception):
    """The session's tab was closed while its job ran: the job is cancelled."""


class StudioSession:
    def __init__(self):
        self.lock = threading.Lock()
        self.busy: str | None = None
        self.closed = False  # closed while a job ran: the job stops at its next progress report
        self.last_error: str | None = None  # the last handler error, for the failed step's status line
        self.session_hash: str | None = None
        self.last_used = time.time()
        self.expired = False
        self._tmp: Path | None = None
        self.prune_count = 0
        self.editor_version = 0  # bumped whenever the per-layer sliders must re-render
        self.calibration: dict | None = None  # the user's own calibration text: path, kb, documents
        self.reset_model(None)

    def __deepcopy__(self, memo):
        """gr.State deep-copies its default value once per browser session: each copy is a new, empty
        session. (A callable default would also add a public load endpoint that resets the caller's
        session; a session's models and locks are never copied.)"""
        return StudioSession()

    # ---- what the session holds -------------------------------------------------------------
    def reset_model(self, loaded) -> None:
        """A new original model: everything derived from the previous one is dropped."""
        self.loaded = loaded
        if loaded is not None:
            self.expired = False
        self.model_info: dict | None = loaded.info() if loaded is not None else None
        self.scores: dict[str, object] = {}  # label -> Scores, kept when the method changes
        self.active: str | None = None  # label of the scores that plans are made from
        self.plan = None
        self.plan_summary: dict | None = None
        self.plan_settings: dict = {}
        self.editor_spec: dict | None = None  # what the per-layer sliders show (plan_events.edit_layers)
        self.drop_pruned()
        self.results: list[dict] = []  # measurements shown in the Compare tab (at most MAX_RESULT_ROWS)

    def drop_pruned(self) -> None:
        self.pruned = None
        self.pruned_plan = None  # the plan the pruned model applies (units chosen sequentially, or the plan)
        self.pruned_from = None  # the session plan it was made from
        self.pruned_summary: dict | None = None
        self.pruned_label: str | None = None
        self.chat_history: dict = {"original": [], "pruned": []}

    def add_scores(self, label: str, scores) -> list[str]:
        """Keep a scores run and make it the active one; returns the labels of runs dropped to stay within
        MAX_SCORE_RUNS (the oldest inactive ones)."""
        self.scores.pop(label, None)
        self.scores[label] = scores
        self.active = label
        dropped = [old for old in list(self.scores)[:-1]][:max(0, len(self.scores) - MAX_SCORE_RUNS)]
        for old in dropped:
            del self.scores[old]
        return dropped

    def add_results(self, rows: list[dict]) -> None:
        """Add measurement rows; a re-run of the same measurement on the same model replaces the older row."""
        keys = {(r["model"], r["metric"]) for r in rows}
        kept = [r for r in self.results if (r["model"], r["metric"]) not in keys] + rows
        self.results = kept[-MAX_RESULT_ROWS:]

    @property
    def active_scores(self):
        return self.scores.get(self.active) if self.active else None

    def tmp_dir(self) -> Path:
        """A private folder for this session's files (exports); removed by free()."""
        if self._tmp is None or not self._tmp.exists():
            self._tmp = Path(tempfile.mkdtemp(prefix="bip-session-"))
            _LIVE_FOLDERS.add(self._tmp)
        return self._tmp

    def free(self) -> None:
        """Drop models, scores and files (the shared original stays in the model store)."""
        self.expired = True
        self.reset_model(None)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            _LIVE_FOLDERS.discard(self._tmp)
            self._tmp = None
        self.calibration = None  # its file was in the folder just removed
        gc.collect()

    # ---- one job at a time ------------------------------------------------------------------
    def begin(self, what: str) -> bool:
        with self.lock:
            if self.busy is not None:
                return False
            self.busy = what
            self.last_used = time.time()
            return True

    def end(self) -> None:
        with self.lock:
            self.busy = None
            self.last_used = time.time()
            closed, self.closed = self.closed, False
        if closed:
            self.free()

    def close(self) -> None:
        """The tab closed: free everything now, or, while a job runs, cancel it and free when it ends."""
        with self.lock:
            if self.busy is not None:
                self.closed = True
                return
        self.free()

    def check_open(self) -> None:
        """Called by running jobs at every progress report: stop if the tab was closed."""
        if self.closed:
            raise SessionClosed(f"{self.busy or 'The job'} was cancelled: its tab was closed.")

    def touch(self) -> None:
        self.last_used = time.time()


class SessionRegistry:
    """session_hash -> StudioSession, so that a closed tab or an idle session frees its memory."""

    def __init__(self, ttl_seconds: int):
        self.ttl = ttl_seconds
        self._sessions: dict[str, StudioSession] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None

    def attach(self, session: StudioSession, session_hash: str | None) -> None:
        session.touch()
        if not session_hash:
            return
        with self._lock:
            session.session_hash = session_hash
            self._sessions[session_hash] = session

    def get(self, session_hash: str | None) -> StudioSession | None:
        with self._lock:
            return self._sessions.get(session_hash) if session_hash else None

    def release(self, session_hash: str | None) -> None:
        with self._lock:
            session = self._sessions.pop(session_hash, None) if session_hash else None
        if session is not None:
            session.close()

    def sweep(self, now: float | None = None) -> int:
        """Free sessions idle for longer than the TTL; returns how many were freed."""
        now = time.time() if now is None else now
        with self._lock:
            idle = [(h, s) for h, s in self._sessions.items() if s.busy is None and now - s.last_used > self.ttl]
            for h, _ in idle:
                self._sessions.pop(h, None)
        for _, session in idle:
            session.free()
        return len(idle)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def start_sweeper(self, every: float = 60.0) -> None:
        if self._sweeper is not None:
            return

        def loop():
            while True:
                time.sleep(every)
                self.sweep()

        self._sweeper = threading.Thread(target=loop, name="bip-session-sweeper", daemon=True)
        self._sweeper.start()


def delete_callback(session) -> None:
    """For gr.State(delete_callback=...): Gradio dropped the state, so drop what it held."""
    if isinstance(session, StudioSession):
        session.close()
