"""The app-wide objects every handler needs: serving settings, the shared model store, the session
registry. Created once by app.build(); handlers reach them through `studio()`."""
from dataclasses import dataclass

from . import jobs
from .model_store import ModelStore
from .original_results import OriginalResults
from .session import SessionRegistry, StudioSession
from .settings import Settings


@dataclass
class Studio:
    settings: Settings
    store: ModelStore
    registry: SessionRegistry
    original_results: OriginalResults  # measurements of the shared originals, dropped with them


_studio: Studio | None = None


def init(settings: Settings, store: ModelStore | None = None) -> Studio:
    global _studio
    jobs.configure(settings.concurrency)
    store = store or ModelStore(settings)
    results = OriginalResults()
    store.on_evict(results.drop)
    _studio = Studio(settings, store, SessionRegistry(settings.session_ttl), results)
    return _studio


def studio() -> Studio:
    if _studio is None:
        raise RuntimeError("components.context.init() was not called (app.build() does it)")
    return _studio


def attach(session: StudioSession, request) -> StudioSession:
    """Register the session under its Gradio session hash (for cleanup when the tab closes)."""
    studio().registry.attach(session, getattr(request, "session_hash", None) if request is not None else None)
    return session
