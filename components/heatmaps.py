"""Plotly figures of scores and plans. Pure functions of plain data (a Scores dict, kept indices):
no Gradio, no torch, so they are cheap to call on every slider move and easy to test.

A scores dict is `Scores.to_dict()`: {"layers": [{"attention": [...], "mlp": [...], "lipschitz":
float?, ...}], "meta": {...}}. `removed` is a list, one per layer, of (removed attention unit
indices, removed MLP channel indices) as sets; None draws no overlay.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

UNIT_LABEL = {"kv_group": "KV group", "query_slot": "query slot", "head": "head"}
REMOVED_RGBA = "rgba(214, 39, 40, {a})"
COLORSCALE = "Viridis"
FONT = dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size=12)


def as_dict(scores) -> dict:
    """Accept a Scores object or its dict."""
    if scores is None:
        return {}
    return scores if isinstance(scores, dict) else scores.to_dict()


def removed_sets(plan_layers, scores_d: dict) -> list[tuple[set, set]] | None:
    """From a plan's kept indices (list of {"attention": [...], "mlp": [...]}) to removed sets."""
    if not plan_layers:
        return None
    out = []
    for layer, kept in zip(scores_d["layers"], plan_layers):
        n_att, n_mlp = len(layer["attention"]), len(layer["mlp"])
        out.append((set(range(n_att)) - set(kept["attention"]), set(range(n_mlp)) - set(kept["mlp"])))
    return out


def _log10(values: np.ndarray, floor: float) -> np.ndarray:
    return np.log10(np.maximum(np.abs(values), floor))


def _floor(*arrays: np.ndarray) -> float:
    pos = np.concatenate([np.abs(a[np.isfinite(a)]).ravel() for a in arrays])
    pos = pos[pos > 0]
    return float(pos.min()) if pos.size else 1e-12


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15)),
                      height=height, margin=dict(l=10, r=10, t=70, b=40), font=FONT,
                      paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
                      hoverlabel=dict(font=FONT))
    return fig


def empty_figure(message: str, height: int = 320) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=15, color="#6b7280"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", height)


def _sig(x: np.ndarray, digits: int = 4) -> np.ndarray:
    """Round to `digits` significant digits (smaller JSON, same hover text)."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(np.isfinite(x) & (x != 0), np.floor(np.log10(np.abs(x))), 0)
    scale = 10.0 ** (digits - 1 - mag)
    return np.round(x * scale) / scale


def mlp_bins(mlp: np.ndarray, removed: set | None, bins: int, order: str, floor: float):
    """Bin one layer's channels. order 'sorted': by score, high to low (bin mean of log10);
    'index': channel order (bin max, so outlier channels stay visible).
    Returns (log10 value per bin, removed fraction per bin, customdata rows per bin):
    sorted: [first rank, last rank, min score, max score, removed, channels in bin];
    index:  [first channel, last channel, argmax channel, max score, removed, channels in bin]."""
    n = mlp.size
    size = max(1, math.ceil(n / bins))
    nb = math.ceil(n / size)
    idx = np.argsort(-mlp, kind="stable") if order == "sorted" else np.arange(n)
    pad = nb * size - n
    logs = np.concatenate([_log10(mlp[idx], floor), np.full(pad, np.nan)]).reshape(nb, size)
    raw = np.concatenate([mlp[idx], np.full(pad, np.nan)]).reshape(nb, size)
    gone = np.zeros(n, dtype=bool)
    if removed:
        gone[list(removed)] = True
    gone = np.concatenate([gone[idx], np.zeros(pad, dtype=bool)]).reshape(nb, size)
    counts = np.full(nb, size)
    counts[-1] = size - pad
    starts = np.arange(nb) * size
    k = gone.sum(axis=1)
    if order == "sorted":
        vals = np.nanmean(logs, axis=1)
        custom = np.stack([starts + 1, starts + counts, _sig(np.nanmin(raw, axis=1)),
                           _sig(np.nanmax(raw, axis=1)), k, counts], axis=1)
    else:
        j = np.nanargmax(logs, axis=1)
        vals = logs[np.arange(nb), j]
        custom = np.stack([starts, starts + counts - 1, idx[starts + j], _sig(raw[np.arange(nb), j]), k, counts], axis=1)
    return np.round(vals, 3), k / counts, custom


def _attention_trace(att: list, removed, unit: str, floor: float) -> tuple[go.Heatmap, float, float]:
    """One cell per attention unit (log10 score, a cross where the plan removes it); the colour range."""
    n_layers, n_units = len(att), max(a.size for a in att)
    z = np.full((n_layers, n_units), np.nan)
    text = [["" for _ in range(n_units)] for _ in range(n_layers)]
    hover = [["" for _ in range(n_units)] for _ in range(n_layers)]
    for i, a in enumerate(att):
        z[i, : a.size] = _log10(a, floor)
        for u in range(a.size):
            gone = removed is not None and u in removed[i][0]
            text[i][u] = "✕" if gone else ""
            hover[i][u] = (f"layer {i}, {unit} {u}<br>score {a[u]:.4g}"
                           + ("<br><b>removed</b>" if gone else ("<br>kept" if removed is not None else "")))
    z = np.round(z, 3)
    lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    trace = go.Heatmap(z=z, x=[f"{u}" for u in range(n_units)], y=list(range(n_layers)), text=text,
                       texttemplate="%{text}", textfont=dict(color="white", size=14), customdata=hover,
                       hovertemplate="%{customdata}<extra></extra>", coloraxis="coloraxis2", xgap=2, ygap=1)
    return trace, lo, hi


def _add_mlp_traces(fig: go.Figure, mlp: list, removed, bins: int, order: str, floor: float) -> None:
    """Binned channels in column 2, with an overlay of the removed share of each bin."""
    zm, zr, cd = [], [], []
    for i, m in enumerate(mlp):
        vals, fracs, custom = mlp_bins(m, removed[i][1] if removed is not None else None, bins, order, floor)
        zm.append(vals)
        zr.append(fracs)
        cd.append(custom)
    width, y = max(len(r) for r in zm), list(range(len(mlp)))
    zm = np.array([np.pad(r, (0, width - len(r)), constant_values=np.nan) for r in zm], dtype=np.float32)
    cd = np.array([np.pad(c, ((0, width - len(c)), (0, 0))) for c in cd], dtype=np.float32)
    if order == "sorted":
        tmpl = ("layer %{y}<br>channels ranked %{customdata[0]:d}-%{customdata[1]:d}"
                "<br>scores %{customdata[2]:.3g} - %{customdata[3]:.3g}")
    else:
        tmpl = ("layer %{y}<br>channels %{customdata[0]:d}-%{customdata[1]:d}"
                "<br>max score %{customdata[3]:.3g} (channel %{customdata[2]:d})")
    if removed is not None:
        tmpl += "<br><b>removed %{customdata[4]:d} of %{customdata[5]:d}</b>"
    fig.add_trace(go.Heatmap(z=zm, y=y, customdata=cd, hovertemplate=tmpl + "<extra></extra>",
                             coloraxis="coloraxis"), row=1, col=2)
    if removed is not None:
        zr = np.array([np.pad(np.where(r > 0, np.round(r, 3), np.nan), (0, width - len(r)), constant_values=np.nan)
                       for r in zr], dtype=np.float32)
        fig.add_trace(go.Heatmap(z=zr, y=y, zmin=0, zmax=1, showscale=False, hoverinfo="skip",
                                 colorscale=[[0, REMOVED_RGBA.format(a=0.15)], [1, REMOVED_RGBA.format(a=0.5)]]),
                      row=1, col=2)


def _add_removed_bars(fig: go.Figure, att: list, mlp: list, removed) -> None:
    """Column 3: the share of each layer's attention units and MLP channels removed."""
    y = list(range(len(att)))
    att_frac = [len(removed[i][0]) / max(1, att[i].size) for i in y]
    mlp_frac = [len(removed[i][1]) / max(1, mlp[i].size) for i in y]
    fig.add_trace(go.Bar(x=att_frac, y=y, orientation="h", name="attention", marker_color="#7c3aed",
                         hovertemplate="layer %{y}: %{x:.0%} of attention removed<extra></extra>"), row=1, col=3)
    fig.add_trace(go.Bar(x=mlp_frac, y=y, orientation="h", name="MLP", marker_color="#f59e0b",
                         hovertemplate="layer %{y}: %{x:.0%} of MLP channels removed<extra></extra>"), row=1, col=3)
    fig.update_xaxes(range=[0, 1], tickformat=".0%", nticks=3, row=1, col=3)
    fig.update_layout(barmode="group", bargap=0.15, bargroupgap=0.0,
                      legend=dict(orientation="h", x=1, xanchor="right", y=-0.045, yanchor="top",
                                  font=dict(size=11), title=dict(text="removed:")))


def _color_axes(fig: go.Figure, mlp_range, att_range) -> None:
    bar = dict(thickness=12, len=0.42, x=1.01, xanchor="left", tickfont=dict(size=10))
    fig.update_layout(
        coloraxis=dict(colorscale=COLORSCALE, cmin=float(mlp_range[0]), cmax=float(mlp_range[1]),
                       colorbar=dict(title=dict(text="MLP<br>log10", side="top"), y=0.0, yanchor="bottom", **bar)),
        coloraxis2=dict(colorscale=COLORSCALE, cmin=att_range[0], cmax=att_range[1],
                        colorbar=dict(title=dict(text="attention<br>log10", side="top"), y=1.0, yanchor="top", **bar)))


def scores_figure(scores, removed: list[tuple[set, set]] | None = None, order: str = "sorted",
                  bins: int = 96, title: str | None = None) -> go.Figure:
    """Attention units | MLP channels (binned) | share removed per layer, on one shared layer axis."""
    d = as_dict(scores)
    layers = d.get("layers") or []
    if not layers:
        return empty_figure("No scores yet: run step 2 (Score).")
    meta = d.get("meta", {})
    unit = UNIT_LABEL.get(meta.get("unit"), "unit")
    n_layers = len(layers)
    att = [np.asarray(layer["attention"], dtype=float) for layer in layers]
    mlp = [np.asarray(layer["mlp"], dtype=float) for layer in layers]
    floor = _floor(*att, *mlp)
    show_removed = removed is not None
    cols = 3 if show_removed else 2
    fig = make_subplots(rows=1, cols=cols, shared_yaxes=True, horizontal_spacing=0.025,
                        column_widths=[0.14, 0.68, 0.18] if show_removed else [0.16, 0.84],
                        subplot_titles=[f"Attention ({unit}s)",
                                        f"MLP channels ({'sorted, binned' if order == 'sorted' else 'by index, bin max'})",
                                        ""][:cols])
    trace, att_lo, att_hi = _attention_trace(att, removed, unit, floor)
    fig.add_trace(trace, row=1, col=1)
    _add_mlp_traces(fig, mlp, removed, bins, order, floor)
    if show_removed:
        _add_removed_bars(fig, att, mlp, removed)
    _color_axes(fig, np.percentile(np.concatenate([_log10(m, floor) for m in mlp]), [0.5, 99.8]), (att_lo, att_hi))
    fig.update_xaxes(showticklabels=True, title_text=unit, row=1, col=1)
    fig.update_xaxes(showticklabels=False, title_text="most important  →  least important"
                     if order == "sorted" else "channel index  →", row=1, col=2)
    fig.update_yaxes(autorange="reversed", title_text="layer", dtick=max(1, n_layers // 15), row=1, col=1)
    method = meta.get("method", "?")
    heading = title or f"Scores of {method}" + (" — red = removed by the current plan" if show_removed else "")
    return _layout(fig, heading, height=max(360, 18 * n_layers + 150))


def _log_ticks(values) -> list[float]:
    """1-2-5 ticks spanning `values` (plotly's own log ticks label 20 as a lone '2')."""
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0] or [1.0]
    lo, hi = min(finite), max(finite)
    ticks = [m * 10 ** e for e in range(-2, 6) for m in (1, 2, 5)]
    inside = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5]
    return inside or [1.0]


def lipschitz_chart(scores, method_name: str | None = None) -> go.Figure:
    """LLM-BIP's attention factor per block: the Lipschitz bound 1 + L_l (bars) and, for the default
    "directional" scores, the MLP's measured gain along each unit's own change (dots, one per unit).

    The title says which factor the scores used: the gain (directional), the bound (measured) or none
    (zero: the direct change). Older scores have only "lipschitz", the L that was used."""
    d = as_dict(scores)
    layers = d.get("layers") or []
    values = [layer.get("lipschitz_estimate", layer.get("lipschitz")) for layer in layers]
    if not layers or all(v is None for v in values):
        method = method_name or d.get("meta", {}).get("method", "this method")
        return empty_figure(f"No Lipschitz estimates: {method} has no Lipschitz factor (LLM-BIP has).", height=260)
    bound = [1 + float(v) if v is not None else float("nan") for v in values]
    gains = [layer.get("unit_gain") or [] for layer in layers]
    used = "gain" if any(gains) else ("bound" if any(layer.get("lipschitz") for layer in layers) else "none")
    fig = go.Figure(go.Bar(x=list(range(len(bound))), y=bound, name="bound 1 + L (random directions)",
                           marker_color="#0ea5e9" if used == "bound" else "#94a3b8",
                           hovertemplate="layer %{x}: bound 1 + L = %{y:.2f}<extra></extra>"))
    if used == "gain":
        xs = [i for i, g in enumerate(gains) for _ in g]
        units = [u for g in gains for u in range(len(g))]
        fig.add_trace(go.Scatter(x=xs, y=[v for g in gains for v in g], mode="markers", customdata=units,
                                 name="measured gain along each unit's change", marker=dict(color="#7c3aed", size=7),
                                 hovertemplate="layer %{x}, unit %{customdata}: gain %{y:.2f}<extra></extra>"))
    fig.update_xaxes(title_text="layer", dtick=max(1, len(bound) // 15), range=[-0.6, len(bound) - 0.4])
    ticks = _log_ticks(bound + [v for g in gains for v in g])
    fig.update_yaxes(title_text="attention factor (log)", type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    fig.update_layout(legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0))
    title = {"gain": "Attention factor: measured gains (dots, used) vs the bound 1 + L (bars)",
             "bound": "Attention factor: the bound 1 + L (used: scores are (1 + L) x mean ||delta||)",
             "none": "Attention factor: the bound 1 + L (shown, not used: scores are mean ||delta||)"}[used]
    return _layout(fig, title, 300)
