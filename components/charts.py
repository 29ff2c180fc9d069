"""Plotly charts of measurements (original vs pruned): perplexity, zero-shot accuracy, speed.

Rows are plain dicts: {"model", "kind", "metric", "value", "detail", "chance"?, "better"?}."""
import math

import plotly.graph_objects as go

from .heatmaps import _layout, empty_figure

PALETTE = ["#64748b", "#7c3aed", "#f59e0b", "#0ea5e9", "#10b981", "#ef4444", "#ec4899"]


def grouped_bars(rows: list[dict], kind: str, title: str, ytitle: str, log: bool = False,
                 percent: bool = False, empty: str = "") -> go.Figure:
    rows = [r for r in rows if r.get("kind") == kind and r.get("value") is not None]
    if not rows:
        return empty_figure(empty or f"No {kind} measurements yet.", height=300)
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = go.Figure()
    for k, model in enumerate(models):
        latest = {r["metric"]: r for r in rows if r["model"] == model}  # a re-run replaces the older value
        xs = [m for m in metrics if m in latest]
        ys = [latest[m]["value"] for m in xs]
        fmt = ".1%" if percent else ".4g"
        fig.add_trace(go.Bar(x=xs, y=ys, name=model, marker_color=PALETTE[k % len(PALETTE)],
                             text=[format(y, fmt) for y in ys], textposition="outside", cliponaxis=False,
                             hovertemplate="%{x}<br>" + model.replace("%", "%%") + ": %{y:" + fmt + "}<extra></extra>"))
    chance = {r["metric"]: r["chance"] for r in rows if r.get("chance") is not None}
    if chance:
        xs = [m for m in metrics if m in chance]
        fig.add_trace(go.Scatter(x=xs, y=[chance[m] for m in xs], mode="markers", name="chance level",
                                 marker=dict(symbol="line-ew-open", size=34, color="#dc2626", line=dict(width=3, color="#dc2626")),
                                 hovertemplate="%{x}<br>chance: %{y:.1%}<extra></extra>"))
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0, xanchor="left"))
    if log:  # bars start at 1 (log10 = 0), so their heights compare on the log scale
        top = max(r["value"] for r in rows if r["value"] > 0)
        fig.update_yaxes(type="log", range=[0, math.log10(top) * 1.15 + 0.05], dtick=1)
    else:
        fig.update_yaxes(rangemode="tozero", tickformat=".0%" if percent else None)
    fig.update_yaxes(title_text=ytitle)
    return _layout(fig, title, 360)


def perplexity_chart(rows):
    return grouped_bars(rows, "perplexity", "Perplexity (lower is better)", "perplexity", log=True,
                        empty="No perplexity yet: press 'Quick perplexity'.")


def zeroshot_chart(rows):
    return grouped_bars(rows, "zero-shot", "Zero-shot accuracy (higher is better; red = chance)", "accuracy",
                        percent=True, empty="No zero-shot results yet.")


def speed_chart(rows):
    return grouped_bars(rows, "speed", "Speed on this machine (tokens per second, higher is better)", "tokens / s",
                        log=True, empty="No speed measurements yet.")
