"""Refit the kept columns of a Linear after pruning its inputs: ridge least squares, pure functions.

A Linear y = W x + b loses input columns P (pruned heads of o_proj, pruned channels of down_proj)
and keeps K. Bias compensation (FLAP) puts back only the mean of what P contributed. Refitting
uses the second moments too: with mu = E[x] and C = Cov(x) over calibration tokens, it minimises

    E || (W x + b) - (W'_K x_K + b') ||^2  +  lam * || W'_K - W_K ||_F^2

whose solution is

    W'_K = (W C[:, K] + lam W_K) (C[K, K] + lam I)^-1,        b' = b + W mu - W'_K mu_K.

The ridge pulls the refit weights toward the original kept weights (not toward zero), so nothing
changes when nothing is removed, and lam = 0 gives the plain least-squares fit of the issue's
formula W C[:, K] C[K, K]^-1. `ridge(C_KK, alpha)` sets lam = alpha * mean(diag C[K, K]), so alpha
is free of the layer's activation scale.

Since W C[:, K] = W_K C[K, K] + W_P C[P, K] (P: the removed columns), the solution is also

    W'_K = W_K + W_P C[P, K] (C[K, K] + lam I)^-1,     b' = b + W_P mu_P - (W'_K - W_K) mu_K,

which is how it is computed: only the blocks C[K, K] and C[P, K] of the covariance are made (in
float64, filled a few rows at a time; the covariance itself stays in its own dtype, float32 from
the calibration pass), C[K, K] + lam I is factored in place by Cholesky once (no copy), and the output rows
are solved a chunk at a time; least squares (gelsd) takes over where C[K, K] + lam I is not
positive definite (lam = 0 with dependent inputs). For a 7B down_proj (11008 inputs) that is one
float64 |K| x |K| matrix (at most 0.97 GB) and |P| x |K| block, plus chunks of ~45 MB, rather than
the full covariance in float64, its copies, an LU factorisation and [out, |K|] float64 matrices.
"""
from __future__ import annotations

import torch


def ridge(covariance_kept: torch.Tensor, alpha: float) -> float:
    """lam = alpha * mean diagonal of C[K, K] (the kept inputs' mean variance)."""
    return _ridge(covariance_kept.diagonal(), alpha)


def _ridge(variances: torch.Tensor, alpha: float) -> float:
    if variances.numel() == 0:
        return 0.0
    return float(alpha) * variances.double().mean().clamp_min(0).item()


ROWS_PER_CHUNK = 512  # output rows (and covariance rows) handled at a time: ~45 MB of float64 for 11008 inputs


def covariance_block(covariance: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                     device=None) -> torch.Tensor:
    """covariance[rows][:, columns] in float64 on `device`, filled a few rows at a time (no copy of the
    whole matrix, nor of the block in the covariance's own dtype)."""
    on = covariance.device
    rows, columns = rows.to(on), columns.to(on)
    block = torch.empty(len(rows), len(columns), dtype=torch.float64, device=device or on)
    for start in range(0, len(rows), ROWS_PER_CHUNK):
        chunk = rows[start:start + ROWS_PER_CHUNK]
        block[start:start + len(chunk)] = covariance[chunk.unsqueeze(1), columns]
    return block


def refit_linear(weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, covariance: torch.Tensor,
                 kept: torch.Tensor, alpha: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(W'_K [out, |K|], b' [out]) for `weight` [out, in] keeping input columns `kept` (see the docstring).

    mean [in] and covariance [in, in] are of the Linear's input over calibration tokens (any float
    dtype, any device). Returned in the weight's dtype and device; the solve is float64, a few output
    rows at a time."""
    w = weight.detach()
    kept, pruned = _split(kept, w.shape[1], w.device)
    mu = torch.as_tensor(mean).to(device=w.device, dtype=torch.float64).reshape(-1)
    b = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if bias is None else bias.detach().double()
    b = b + w[:, pruned].double() @ mu[pruned]  # not in place: b may be the caller's bias
    if len(kept) == 0 or len(pruned) == 0:
        return w[:, kept], b.to(w.dtype)  # indexing copies
    cross = covariance_block(covariance, pruned, kept, w.device)  # C[P, K]
    lam = _ridge(covariance.diagonal()[kept.to(covariance.device)], alpha)
    solve = _solver(lambda: _ridged(covariance, kept, lam, w.device))
    new_w = torch.empty(w.shape[0], len(kept), dtype=w.dtype, device=w.device)
    for start in range(0, w.shape[0], ROWS_PER_CHUNK):
        rows = slice(start, start + ROWS_PER_CHUNK)
        w_kept = w[rows][:, kept].double()
        delta = solve(w[rows][:, pruned].double() @ cross, w_kept)  # W'_K - W_K for these rows
        new_w[rows] = w_kept + delta
        b[rows] -= delta @ mu[kept]
    return new_w, b.to(w.dtype)


def _split(kept, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, removed) column indices as long tensors on `device`."""
    kept = torch.as_tensor(kept, dtype=torch.long, device=device).reshape(-1)
    removed = torch.ones(width, dtype=torch.bool, device=device)
    removed[kept] = False
    return kept, removed.nonzero().reshape(-1)


def _ridged(covariance: torch.Tensor, kept: torch.Tensor, lam: float, device) -> torch.Tensor:
    """C[K, K] + lam I in float64 (a fresh matrix)."""
    lhs = covariance_block(covariance, kept, kept, device)
    lhs.diagonal().add_(lam)
    return lhs


def _solver(make_lhs):
    """solve(shift, w_kept) -> shift lhs^-1 for the symmetric lhs = make_lhs(), made and factored (Cholesky) once.
    Where lhs is not positive definite, least squares on the whole system W'_K lhs = W_K lhs + shift, minus W_K
    (the minimum-norm W'_K, as a plain least-squares solve gives it)."""
    factor = _cholesky_in_place(make_lhs())
    lhs = make_lhs() if factor is None else None

    def solve(shift: torch.Tensor, w_kept: torch.Tensor) -> torch.Tensor:
        if factor is not None:
            delta = _cholesky_solve_right(shift, factor)
            if torch.isfinite(delta).all():
                return delta
        a = lhs if lhs is not None else make_lhs()
        solution = torch.linalg.lstsq(a, (shift + w_kept @ a).T,
                                      driver="gelsd" if a.device.type == "cpu" else None).solution
        return solution.T - w_kept

    return solve


def _cholesky_in_place(lhs: torch.Tensor) -> torch.Tensor | None:
    """The lower Cholesky factor L of the symmetric `lhs`, written over it (a column-major view, which LAPACK
    factors without a copy: lhs is its own transpose); None when lhs is not positive definite."""
    factor = lhs.mT
    info = torch.empty((), dtype=torch.int32, device=lhs.device)
    torch.linalg.cholesky_ex(factor, out=(factor, info))
    return factor if int(info) == 0 and bool(torch.isfinite(factor.diagonal()).all()) else None


def _cholesky_solve_right(shift: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """shift (L L^T)^-1 by two triangular solves from the right (no copy of L, unlike torch.cholesky_solve)."""
    half = torch.linalg.solve_triangular(factor.mT, shift, upper=True, left=False)  # half L^T = shift
    return torch.linalg.solve_triangular(factor, half, upper=False, left=False)     # delta L = half


__all__ = ["refit_linear", "ridge", "covariance_block"]
