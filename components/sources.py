"""Text sources offered in the app: the built-in ones (labelled with what needs internet) and your own
calibration text, uploaded as a .txt file or pasted, which becomes the 'custom' calibration source.

bip_core checks it (UTF-8, size cap, some text) and stores it in the session's folder under a name
of its content hash; scoring then reads it as `file:PATH`. Nothing leaves the machine.
"""
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from bip_core.data import SOURCES, load_texts, save_user_text

from .context import attach
from .jobs import ui_errors

SOURCE_LABELS = {"wiki-bb": "wiki-bb (Wikipedia, offline)", "wikitext2": "WikiText-2 (needs internet)",
                 "ptb": "PTB (needs internet)", "c4": "C4 (needs internet)"}
CUSTOM = "custom"  # the calibration source value that means the session's own text
MAX_BYTES = 2 * 2**20
CUSTOM_LABEL = "your own text (upload or paste it below)"


def build():
    with gr.Accordion("Your own calibration text", open=False, elem_id="bip-own-text"):
        upload = gr.File(label="Upload a UTF-8 .txt file", file_types=[".txt"], type="filepath", height=140)
        pasted = gr.Textbox(label="or paste text", lines=3, max_lines=8, placeholder="Documents separated by "
                            "blank lines. A few hundred KB of text like your use case is plenty.",
                            elem_id="bip-own-text-box")
        use = gr.Button("Use this text", size="sm", elem_id="bip-own-text-btn")
        info = gr.Markdown("", label="message", elem_classes=["bip-small"], elem_id="bip-own-text-info")
    return SimpleNamespace(upload=upload, pasted=pasted, use=use, info=info)


def _read_upload(path) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_BYTES + 1)  # more than the cap is refused without reading it all


@ui_errors
def use_text(session, file, text, request: gr.Request):
    """Your own calibration text (an uploaded UTF-8 .txt `file`, else the pasted `text`; at most 2 MiB): score
    with source 'custom' to use it. Returns: message, the calibration source picker."""
    attach(session, request)
    if file:
        data = _read_upload(file)
    elif (text or "").strip():
        data = text
    else:
        raise gr.Error("Upload a .txt file or paste some text first.", print_exception=False)
    path = save_user_text(data, session.tmp_dir(), max_bytes=MAX_BYTES)
    documents = load_texts(f"file:{path}")
    session.calibration = {"path": str(path), "kb": Path(path).stat().st_size / 1024, "documents": len(documents)}
    info = session.calibration
    message = (f"Using **your text** ({info['kb']:.0f} KB, {info['documents']} documents) as calibration text: "
               "it is now the source. Press Score to use it.")
    return message, CUSTOM


def builtin_choices() -> list[tuple[str, str]]:
    return [(SOURCE_LABELS.get(s, s), s) for s in SOURCES]


def source_choices() -> list[tuple[str, str]]:
    """Calibration sources: the built-in ones, then the user's own text."""
    return builtin_choices() + [(CUSTOM_LABEL, CUSTOM)]


def resolve(session, source: str) -> str:
    """The bip_core source for the picker's value: 'custom' is the session's text as file:PATH."""
    if source != CUSTOM:
        return source
    info = session.calibration
    if not info or not Path(info["path"]).is_file():
        raise gr.Error("No calibration text of yours yet: upload or paste it under 'Your own calibration text', "
                       "press 'Use this text', then Score.", print_exception=False)
    return f"file:{info['path']}"
