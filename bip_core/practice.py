"""Each method's default compensation and sequential setting ("auto" in sweep and prune, the app's Prune step).

    compensation, sequential = default_practice(scores)

One table, chosen as each original runs it, except LLM-BIP's, which was chosen on the wiki-bb valid
split (benchmarks/compensation.py, results/compensation_ablate_*.csv; README "Compensation"):

    LLM-BIP (centred scores)   refit, sequential   the kept o_proj/down_proj columns refit layer by layer
    FLAP                       bias, one pass      its own mean compensation
    Wanda-sp                   none, sequential    FLAP's prune_wanda_sp: bias=False, layer by layer
    the rest                   none, one pass      (bias needs centred scores and their mean inputs)

Refit and sequential need a forward method's mean inputs (scores.has_mean_inputs); without them the
default falls back to none, one pass.
"""
from __future__ import annotations

from .errors import BipError
from .scores import has_mean_inputs, recommends_compensation

PRACTICE = {  # method -> (compensation for centred scores, sequential)
    "bip": ("refit", True),
    "flap": ("bias", False),
    "wanda-sp": ("none", True),
}


def default_practice(scores) -> tuple[str, bool]:
    """(compensation, sequential) for these scores: PRACTICE, where the scores allow it."""
    method = scores.meta.get("method")
    if not has_mean_inputs(scores):
        return "none", False
    compensation, sequential = PRACTICE.get(method, ("none", False))
    if compensation != "none" and not recommends_compensation(scores):
        compensation = "none"  # a full-change (uncentred) score: measured without compensation
    return compensation, sequential


COMPENSATION_ALIASES = {True: "bias", "on": "bias", False: "none", "off": "none", None: "none"}


def resolve_compensation(setting, scores) -> str:
    """none / bias / refit; 'auto' = the method's default practice (bip_core.practice); on/off/True/False:
    bias/none."""
    from .sequential import COMPENSATIONS

    setting = COMPENSATION_ALIASES.get(setting, setting)
    if setting == "auto":
        return default_practice(scores)[0]
    if setting not in COMPENSATIONS:
        raise BipError(f"compensation must be auto, {', '.join(COMPENSATIONS)} (got {setting!r}).")
    return setting


def resolve_sequential(setting, scores) -> bool:
    """'auto': the method's default practice (Wanda-sp and LLM-BIP layer by layer); else the boolean asked."""
    if setting == "auto":
        return default_practice(scores)[1]
    if setting not in (True, False):
        raise BipError(f"sequential must be 'auto', True or False (got {setting!r}).")
    return setting


def practice_text() -> str:
    """'bip refit + sequential, flap bias, ...': the table as the CLI's help shows it."""
    return ", ".join(f"{method} {compensation}{' + sequential' if sequential else ''}"
                     for method, (compensation, sequential) in PRACTICE.items())


__all__ = ["default_practice", "practice_text", "resolve_compensation", "resolve_sequential", "PRACTICE"]
