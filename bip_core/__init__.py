"""BIP Studio's library: structured pruning of LLaMA-family LLMs with LLM-BIP.

Data flows one way: model -> scores -> plan -> pruned model -> evaluation. No Gradio here.
"""
__version__ = "0.1.0"
