"""BIP Studio's Gradio UI pieces, one idea per file. They call bip_core only; app.py wires them."""
