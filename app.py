"""BIP Studio: Gradio entry point (minimal shell; the full app grows in components/)."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from bip_core.loading import load_model  # noqa: E402


def build():
    loaded = load_model("default")
    with gr.Blocks(title="BIP Studio") as demo:
        gr.Markdown("# BIP Studio\nStructured pruning of LLMs with LLM-BIP.")
        gr.JSON(loaded.info(), label="Loaded model")
    return demo


if __name__ == "__main__":
    build().launch(server_name=os.environ.get("BIP_HOST", "127.0.0.1"),
                   server_port=int(os.environ.get("BIP_PORT", "7860")), share=False)
