"""Step 3's compensation and sequential controls: their choices, their defaults for the active scores,
and what a choice needs (the library does the work: bip_core.sequential.compress_like)."""
import gradio as gr

from bip_core.practice import default_practice
from bip_core.scores import has_mean_inputs, recommends_compensation
from bip_core.sequential import COMPENSATIONS, needs_pass

CHOICES = [("none", "none"), ("bias (FLAP's mean)", "bias"), ("refit (least squares)", "refit")]
NAMES = {"none": "no compensation", "bias": "bias comp.", "refit": "refit"}
PASS_NOTE = "one more calibration pass, about as long as scoring"


def accept_former_bool(radio: gr.Radio) -> gr.Radio:
    """Scripts written for the former checkbox (/prune with bias: bool) still work: True is "bias", False
    "none". (On the instance: a gr.Radio subclass would make Gradio write a .pyi stub next to this file.)"""
    plain = radio.preprocess

    def preprocess(payload):
        return plain(("bias" if payload else "none") if isinstance(payload, bool) else payload)

    radio.preprocess = preprocess
    radio.api_info = lambda: {"anyOf": [{"type": "string", "enum": list(COMPENSATIONS)}, {"type": "boolean"}]}
    return radio


def build():
    """(compensation radio, sequential checkbox): none and off until scores set their defaults (`defaults`)."""
    radio = gr.Radio(CHOICES, value="none", label="Compensation", elem_id="bip-compensation",
                     info="what puts back the removed units' contribution")
    compensation = accept_former_bool(radio)
    sequential = gr.Checkbox(False, label="Sequential (layer by layer)", elem_id="bip-sequential",
                             info=f"choose each layer's units on the pruned layers' outputs; {PASS_NOTE}")
    return compensation, sequential


def recalibrates(scores) -> bool:
    """Whether these scores can be measured again layer by layer (refit, sequential): a forward method
    (LLM-BIP, FLAP, Wanda-sp), whose scores record the mean inputs."""
    return scores is not None and has_mean_inputs(scores)


def _compensation_info(scores) -> str:
    if not recalibrates(scores):
        return "needs scores of a forward method (LLM-BIP, FLAP, Wanda-sp); these have no forward pass"
    if scores.meta.get("method") == "bip" and recommends_compensation(scores):
        return "refit, sequential: LLM-BIP's default (best on the valid split); " + PASS_NOTE
    if recommends_compensation(scores):
        return "bias recommended: these scores measure the change left after it; refit: " + PASS_NOTE
    return "these scores measure the full change: none is their default; refit: " + PASS_NOTE


def defaults(session):
    """The two controls' updates for the active scores: each method's default practice (bip_core.practice:
    LLM-BIP refit and sequential, FLAP bias, Wanda-sp sequential), as the CLI's sweep does."""
    scores = session.active_scores if session is not None else None
    if scores is None:
        return gr.update(), gr.update()
    usable = recalibrates(scores)
    compensation, sequential = default_practice(scores)
    return (gr.update(value=compensation, interactive=usable, info=_compensation_info(scores)),
            gr.update(value=usable and sequential, interactive=usable))


def check(scores, compensation: str, sequential: bool) -> None:
    """Refuse, before any work, a choice these scores cannot give."""
    if compensation not in COMPENSATIONS:
        raise gr.Error(f"Unknown compensation '{compensation}': choose one of {', '.join(COMPENSATIONS)}.",
                       print_exception=False)
    if recalibrates(scores):
        return
    method = scores.meta.get("method")
    if needs_pass(compensation, sequential):
        raise gr.Error(f"Refit and sequential pruning measure each layer again with the scores' method; {method} "
                       "scores have no forward pass to repeat. Score with LLM-BIP, FLAP or Wanda-sp, or choose "
                       "compensation none without sequential.", print_exception=False)
    if compensation == "bias":
        raise gr.Error(f"Bias compensation needs the mean inputs a forward pass records; {method} scores have "
                       "none. Score with LLM-BIP, FLAP or Wanda-sp, or choose compensation none.",
                       print_exception=False)


def describe(compensation: str, sequential: bool) -> str:
    """A short tag for labels: "bias comp.", "refit, sequential", "no compensation"."""
    return NAMES[compensation] + (", sequential" if sequential else "")
