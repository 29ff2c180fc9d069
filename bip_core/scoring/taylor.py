"""Taylor (LLM-Pruner; reference: horseee/LLM-Pruner LLMPruner/pruner/hf_llama_pruner.py).

First-order estimate of the change of the calibration loss L (LM-head cross-entropy, mean over all
calibration tokens, gradients from backward passes through the full model) when a unit's weights
are zeroed. With the salience S = W * dL/dW of each coupled weight matrix:

    variant="element1":  sum |S|    over each coupled channel's weights
    variant="vector":    |sum S|    over each coupled channel's weights (the reference's "vectorize")

A coupled channel is a row of q/k/v/gate/up or a column of o/down; a unit or an MLP channel sums its
coupled channels (the reference's group reduction "sum"):

    attention unit g = its q rows + o columns (+ k and v rows when the unit removes them)
    mlp channel j    = gate row j + up row j + down column j

Only the scored weights get gradients (embeddings stay frozen; with tied embeddings the LM head is
the embedding matrix and is not touched). Biases are not scored, as in the reference.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..architecture import LINEARS, block_parts, decoder_layers
from ..calibration import LayerStats, weight
from ..errors import ScoresError
from .units import per_unit

PASS = "backward"
DEFAULTS = {"variant": "element1"}
CHOICES = {"variant": ("element1", "vector")}
SCORED = LINEARS  # every Linear of a block


def _scored_weights(model) -> list[torch.nn.Parameter]:
    return [getattr(block_parts(model, i), name).weight
            for i in range(len(decoder_layers(model))) for name in SCORED]


@contextmanager
def context(model):
    """Gradients for the scored weights only, for the duration of scoring; restored afterwards."""
    scored = _scored_weights(model)
    if any(p.device.type == "meta" for p in scored):
        raise ScoresError("taylor needs gradients of every weight, which offloaded (disk/CPU-offloaded) "
                          "weights cannot keep. Load the model fully onto devices, or use a forward method "
                          "(bip, flap, wanda-sp).")
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for p in scored:
            p.requires_grad_(True)
        yield
    finally:
        for p, requires_grad, grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad


class Stats(LayerStats):
    def finish(self):
        out = super().finish()
        parts = self.parts

        def salience(linear):  # S = W * dL/dW  [out, in]
            w, grad = weight(linear).cpu(), linear.weight.grad
            if grad is None and w.numel():
                raise ScoresError("taylor found no gradients: the calibration pass did not run backward.")
            return w * (grad.detach().float().cpu() if grad is not None else 0)  # no grad: a zero-size weight

        def reduce(linear, dim):  # per output channel (dim=1, rows) or input channel (dim=0, columns)
            s = salience(linear)
            return s.abs().sum(dim) if self.options["variant"] == "element1" else s.sum(dim).abs()

        out["attention"] = per_unit(reduce(parts.q_proj, 1) + reduce(parts.o_proj, 0), self.geometry, self.unit,
                                    kv_values=reduce(parts.k_proj, 1) + reduce(parts.v_proj, 1))
        out["mlp"] = reduce(parts.gate_proj, 1) + reduce(parts.up_proj, 1) + reduce(parts.down_proj, 0)
        return out
