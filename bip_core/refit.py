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
float64, the covariance itself stays in its own dtype, float32 from the calibration pass), C[K, K]
+ lam I is factored in place by Cholesky, and least squares (gelsd) takes over where it is not
positive definite (lam = 0 with dependent inputs). For a 7B down_proj (11008 inputs) that is about
1 GB of float64 rather than the 4 GB of the full covariance, its copies and an LU factorisation.
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


def covariance_block(covariance: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                     device=None) -> torch.Tensor:
    """covariance[rows][:, columns] in float64 on `device`, without a copy of the whole matrix."""
    on = covariance.device
    block = covariance[rows.to(on).unsqueeze(1), columns.to(on)]
    return block.to(device=device or on, dtype=torch.float64)


def refit_linear(weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, covariance: torch.Tensor,
                 kept: torch.Tensor, alpha: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(W'_K [out, |K|], b' [out]) for `weight` [out, in] keeping input columns `kept` (see the docstring).

    mean [in] and covariance [in, in] are of the Linear's input over calibration tokens (any float
    dtype, any device). Returned in the weight's dtype and device; the solve is float64."""
    w = weight.detach()
    kept, pruned = _split(kept, w.shape[1], w.device)
    mu = torch.as_tensor(mean).to(device=w.device, dtype=torch.float64).reshape(-1)
    b = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if bias is None else bias.detach().double()
    w_pruned = w[:, pruned].double()
    removed_mean = w_pruned @ mu[pruned]  # [out]: what the removed columns gave on average
    if len(kept) == 0 or len(pruned) == 0:
        return w[:, kept], (b + removed_mean).to(w.dtype)  # indexing copies
    shift_t = covariance_block(covariance, kept, pruned, w.device) @ w_pruned.T  # (W_P C[P, K])^T: [|K|, out]
    del w_pruned
    lam = _ridge(covariance.diagonal()[kept.to(covariance.device)], alpha)
    delta_t = _solve_shift(lambda: _ridged(covariance, kept, lam, w.device), shift_t, w[:, kept].double().T)
    new_w = w[:, kept].double().add_(delta_t.T)
    new_b = b + removed_mean - mu[kept] @ delta_t  # not in place: b may be the caller's bias
    return new_w.to(w.dtype), new_b.to(w.dtype)


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


def _solve_shift(make_lhs, shift_t: torch.Tensor, w_kept_t: torch.Tensor) -> torch.Tensor:
    """(W'_K - W_K)^T = lhs^-1 shift_t for a symmetric lhs = make_lhs(): Cholesky, factored in place;
    where lhs is not positive definite, least squares on the whole system lhs W'_K^T = lhs W_K^T + shift_t
    (the minimum-norm W'_K, as a plain least-squares solve gives it)."""
    factor = make_lhs()
    info = torch.empty((), dtype=torch.int32, device=factor.device)
    torch.linalg.cholesky_ex(factor, out=(factor, info))
    if int(info) == 0:
        delta_t = torch.cholesky_solve(shift_t, factor)
        if torch.isfinite(delta_t).all():
            return delta_t
    del factor
    lhs = make_lhs()
    rhs_t = shift_t.add_(lhs @ w_kept_t)
    driver = "gelsd" if lhs.device.type == "cpu" else None
    return torch.linalg.lstsq(lhs, rhs_t, driver=driver).solution.sub_(w_kept_t)


__all__ = ["refit_linear", "ridge", "covariance_block"]
