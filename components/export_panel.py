"""Step 5: the pruned model as a zip archive of a standard transformers folder, with its plan file."""
import re
import shutil
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from bip_core.default_model import DEFAULT_NAME
from bip_core.export import export_model
from bip_core.formatting import format_params
from bip_core.sequential import compensation_record

from . import texts
from .context import attach
from .jobs import heavy, require_pruned, ui_errors


def build():
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            info = gr.Markdown("Prune a model first (step 3); then export it here.", elem_classes=["bip-status"])
            run = gr.Button("Build the archive", variant="primary", elem_id="bip-export-btn")
            status = gr.Markdown("", label="message", elem_classes=["bip-status"], min_height=56,
                                 elem_id="bip-export-status")
            file = gr.File(label="Pruned model (zip)", interactive=False, elem_id="bip-export-file")
            listing = gr.Dataframe(headers=["file", "size"], value=[], interactive=False, label="Contents")
        with gr.Column(scale=1, min_width=300):
            gr.Markdown(texts.EXPORT, elem_classes=["bip-teach"])
    return SimpleNamespace(info=info, run=run, status=status, file=file, listing=listing)


def export_info(session) -> str:
    if session is None or session.pruned is None:
        return "Prune a model first (step 3); then export it here."
    s = session.pruned_summary or {}
    return (f"Ready to export **{session.pruned_label}** ({format_params(s.get('params_after', 0))} parameters, "
            f"about {s.get('params_after', 0) * 4 / 2**20:.0f} MiB in float32).")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "model"


def _size(n: int) -> str:
    """In the units of Gradio's file widget next to it (it divides by 1024 and writes 'MB')."""
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


def provenance(session) -> dict:
    """What the export records of how it was made: as the CLI's prune, plus the app's scores label."""
    s = session.pruned_summary or {}
    compensation = s.get("compensation", "none")
    return {"base_model": session.loaded.spec, **compensation_record(compensation, s.get("sequential")),
            "scores": session.pruned_plan.meta.get("method"), "scores_label": s.get("scores_label"),
            "exported_by": "BIP Studio app"}


@ui_errors
def run_export(session, request: gr.Request, progress=gr.Progress()):
    """The pruned model as a zip of a transformers folder (safetensors, config, tokenizer, plan).
    Returns: message, archive, contents table."""
    attach(session, request)
    pruned = require_pruned(session)
    loaded = session.loaded
    s = session.pruned_summary or {}
    base = DEFAULT_NAME if loaded.spec == "default" else Path(loaded.spec.rstrip("/")).name
    name = _slug(f"{base}-bip-{s.get('removed_attention_mlp', 0):.0%}-{s.get('allocation', '')}"
                 .replace("%", "pct"))
    root = session.tmp_dir()
    with heavy(session, "Export", progress):
        for old in root.glob("*.zip"):
            old.unlink(missing_ok=True)
        folder = root / "export" / name
        progress(0.1, desc="Writing safetensors, config, tokenizer and plan ...")
        t0 = time.perf_counter()
        export_model(pruned, loaded.tokenizer, session.pruned_plan, folder, provenance=provenance(session))
        progress(0.7, desc="Packing the zip archive ...")
        archive = root / f"{name}.zip"
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        # Weights barely compress: store them, deflate the small text files.
        with zipfile.ZipFile(archive, "w") as zf:
            for p in files:
                method = zipfile.ZIP_STORED if p.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
                zf.write(p, arcname=f"{name}/{p.relative_to(folder)}", compress_type=method)
        listing = [[str(p.relative_to(folder)), _size(p.stat().st_size)] for p in files]
        shutil.rmtree(root / "export", ignore_errors=True)
    msg = (f"**{archive.name}** ({_size(archive.stat().st_size)}) built in {time.perf_counter() - t0:.1f} s. "
           f"Unzip it and load the folder with `load_model(folder)` or transformers.")
    return msg, str(archive), listing
