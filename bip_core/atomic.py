"""Write a file all at once or not at all: a temporary file in the same folder, renamed into place.

A reader never sees half a file, a failed write keeps the old file, and the temporary file never
outlives a failure.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path, text) -> Path:
    """Write `text` (a string, or an iterable of strings written one after another) to `path` atomically.
    Creates the parent folders; on any error the old file stays as it was and no temporary file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines([text] if isinstance(text, str) else text)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp's 0o600 is too private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_if_changed(path, text: str) -> bool:
    """Write `text` atomically unless the file already holds exactly it; True when written."""
    path = Path(path)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(path, text)
    return True


__all__ = ["write_text_atomic", "write_if_changed"]
