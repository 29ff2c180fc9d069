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
is free of the layer's activation scale. Statistics and the solve run in float64.
"""
from __future__ import annotations

import torch


def ridge(covariance_kept: torch.Tensor, alpha: float) -> float:
    """lam = alpha * mean diagonal of C[K, K] (the kept inputs' mean variance)."""
    if covariance_kept.numel() == 0:
        return 0.0
    return float(alpha) * covariance_kept.diagonal().mean().clamp_min(0).item()


def refit_linear(weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, covariance: torch.Tensor,
                 kept: torch.Tensor, alpha: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(W'_K [out, |K|], b' [out]) for `weight` [out, in] keeping input columns `kept` (see the docstring).

    mean [in] and covariance [in, in] are of the Linear's input over calibration tokens. Returned in
    the weight's dtype and device; the solve is float64."""
    w = weight.detach().double()
    mu, cov = mean.to(w).reshape(-1), covariance.to(w)
    kept = torch.as_tensor(kept, dtype=torch.long, device=w.device)
    b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if bias is None else bias.detach().to(w)
    w_kept = w[:, kept]
    cov_kk = cov[kept][:, kept]
    lam = ridge(cov_kk, alpha)
    lhs = cov_kk + lam * torch.eye(len(kept), dtype=w.dtype, device=w.device)  # symmetric
    rhs = w @ cov[:, kept] + lam * w_kept  # [out, |K|]
    new_w = _solve(lhs, rhs) if len(kept) else w_kept
    new_b = b + w @ mu - new_w @ mu[kept]
    return new_w.to(weight.dtype), new_b.to(weight.dtype)


def _solve(lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """rhs @ lhs^-1 for a symmetric lhs; least squares where lhs is singular (lam = 0, dependent inputs)."""
    solution, info = torch.linalg.solve_ex(lhs, rhs.T)
    if bool((info != 0).any()) or not torch.isfinite(solution).all():
        solution = torch.linalg.lstsq(lhs, rhs.T, driver="gelsd" if lhs.device.type == "cpu" else None).solution
    return solution.T


__all__ = ["refit_linear", "ridge"]
