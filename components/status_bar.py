"""The pipeline strip at the top of the page: model -> scores -> plan -> pruned, with what each holds."""
import html

from bip_core.formatting import format_params


def _step(n: int, name: str, done: bool, detail: str) -> str:
    cls = "bip-step done" if done else "bip-step"
    mark = "✓" if done else str(n)
    return (f'<div class="{cls}"><span class="bip-step-mark">{mark}</span>'
            f'<span class="bip-step-name">{name}</span><span class="bip-step-detail">{html.escape(detail)}</span></div>')


def render(session) -> str:
    loaded = getattr(session, "loaded", None)
    model = "not loaded"
    if loaded is not None:
        info = getattr(session, "model_info", None) or {}
        model = f"{loaded.spec} · {format_params(info.get('params'))} params"
    scores = session.active or "none yet" if loaded is not None else "—"
    plan = "—"
    if session.plan_summary:
        s = session.plan_summary
        plan = f"{s['removed_attention_mlp']:.1%} of attn+MLP · {s.get('allocation')}"
    pruned = "—"
    if session.pruned is not None and session.pruned_summary:
        pruned = f"{format_params(session.pruned_summary.get('params_after'))} params"
    parts = [
        _step(1, "Model", loaded is not None, model),
        _step(2, "Scores", bool(session.scores), scores if loaded is not None else "—"),
        _step(3, "Plan", session.plan is not None, plan),
        _step(4, "Pruned", session.pruned is not None, pruned),
    ]
    return '<div class="bip-steps">' + '<span class="bip-arrow">→</span>'.join(parts) + "</div>"
