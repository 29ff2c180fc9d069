"""Refit of kept columns (bip_core.refit): exact cases and a least-squares reference, on real activations."""
from __future__ import annotations

import pytest
import torch

from bip_core.architecture import block_parts
from bip_core.calibration import RunningMoments
from bip_core.loading import random_model
from bip_core.refit import refit_linear, ridge
from bip_core.tiny_configs import tiny_config


def _down_inputs(family: str = "llama") -> tuple[torch.nn.Linear, torch.Tensor]:
    """down_proj of layer 1 of a random tiny model and its real inputs over 4 x 32 random tokens."""
    model = random_model(tiny_config(family), seed=0)
    parts = block_parts(model, 1)
    seen = []
    handle = parts.down_proj.register_forward_hook(lambda _m, args, _o: seen.append(args[0].flatten(0, -2)))
    with torch.no_grad():
        model(input_ids=torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0)))
    handle.remove()
    return parts.down_proj, torch.cat(seen).double()


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) covariance in float64, as the refit's statistics are kept."""
    centred = x - x.mean(0)
    return x.mean(0), centred.T @ centred / len(x)


def test_float32_running_moments_are_close_to_the_float64_ones():
    _, x = _down_inputs()
    moments = RunningMoments(covariance=True)
    for chunk in x.split(37):
        moments.add(chunk)
    mean, cov = _moments(x)
    assert torch.allclose(moments.mean.reshape(-1).double(), mean, atol=1e-5)
    assert torch.allclose(moments.variance().double(), cov, atol=1e-5 * cov.abs().max())


def test_nothing_removed_returns_the_original_weights():
    linear, x = _down_inputs()
    mean, cov = _moments(x)
    kept = torch.arange(linear.in_features)
    w, b = refit_linear(linear.weight, None, mean, cov, kept, alpha=1e-2)
    assert torch.allclose(w, linear.weight, atol=1e-6)
    assert b.abs().max() < 1e-6


def test_inputs_that_span_the_kept_columns_are_reproduced_exactly():
    torch.manual_seed(0)
    w_full = torch.randn(16, 24, dtype=torch.float64)
    x_kept = torch.randn(500, 12, dtype=torch.float64)
    mix = torch.randn(12, 12, dtype=torch.float64)
    x = torch.cat([x_kept, x_kept @ mix + 3.0], dim=1)  # pruned inputs are affine in the kept ones
    kept = torch.arange(12)
    mean, cov = _moments(x)
    w, b = refit_linear(w_full, None, mean, cov, kept, alpha=0.0)
    assert torch.allclose(x[:, kept] @ w.T + b, x @ w_full.T, atol=1e-8)


@pytest.mark.parametrize("alpha", [0.0, 1e-3, 1e-1])
def test_refit_equals_a_lstsq_reference_on_real_activations(alpha):
    linear, x = _down_inputs("qwen2")
    w_full = linear.weight.detach().double()
    kept = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(1))[: x.shape[1] // 2].sort().values
    mean, cov = _moments(x)
    w, b = refit_linear(w_full, None, mean, cov, kept, alpha=alpha)
    # reference: min ||X_c W^T - X_Kc W'^T||^2 + lam ||W' - W_K||^2 as one augmented lstsq, X centred
    centred = x - x.mean(0)
    lam = ridge(cov[kept][:, kept], alpha) * len(x)  # the covariance is a mean over tokens, lstsq a sum
    a = torch.cat([centred[:, kept], lam ** 0.5 * torch.eye(len(kept), dtype=torch.float64)])
    target = torch.cat([centred @ w_full.T, lam ** 0.5 * w_full[:, kept].T])
    reference = torch.linalg.lstsq(a, target, driver="gelsd").solution.T
    assert torch.allclose(w, reference, atol=1e-7 * reference.abs().max())
    reference_bias = w_full @ x.mean(0) - reference @ x.mean(0)[kept]
    assert torch.allclose(b, reference_bias, atol=1e-6)
    # and the fit is better than bias compensation alone on the calibration inputs
    compensated = x[:, kept] @ w_full[:, kept].T + w_full[:, ~torch.isin(torch.arange(x.shape[1]), kept)] @ \
        x.mean(0)[~torch.isin(torch.arange(x.shape[1]), kept)]
    dense = x @ w_full.T
    assert ((x[:, kept] @ w.T + b - dense) ** 2).mean() < ((compensated - dense) ** 2).mean()


def _direct_refit(w: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, kept: torch.Tensor, alpha: float):
    """The formula of the module docstring as written, on the whole covariance: the reference for the lean solve."""
    cov_kk = cov[kept][:, kept]
    lam = ridge(cov_kk, alpha)
    lhs = cov_kk + lam * torch.eye(len(kept), dtype=torch.float64)
    rhs = w @ cov[:, kept] + lam * w[:, kept]
    new_w = torch.linalg.lstsq(lhs, rhs.T, driver="gelsd").solution.T
    return new_w, w @ mean - new_w @ mean[kept]


@pytest.mark.parametrize("tokens, alpha", [(400, 1e-3), (400, 0.0), (20, 0.0), (20, 1e-2)])
def test_the_lean_solve_equals_the_direct_formula(tokens, alpha):
    """Cholesky, and least squares where C[K, K] is singular (20 tokens, 48 kept inputs, alpha 0: the
    minimum-norm solution, as the direct lstsq gives it); a float32 covariance where the problem is well posed
    (singular and unregularised, float32 rounding decides the rank)."""
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(16, 64, dtype=torch.float64, generator=generator)
    x = torch.randn(tokens, 64, dtype=torch.float64, generator=generator) * torch.linspace(0.1, 3, 64) + 0.5
    kept = torch.randperm(64, generator=generator)[:48].sort().values
    mean, cov = _moments(x)
    reference_w, reference_b = _direct_refit(w, mean, cov, kept, alpha)
    scale = reference_w.abs().max()
    if tokens > 64 or alpha > 0:
        new_w, new_b = refit_linear(w, None, mean, cov.float(), kept, alpha=alpha)
        assert torch.allclose(new_w, reference_w, atol=1e-4 * scale)
        assert torch.allclose(new_b, reference_b, atol=1e-4 * scale)
    exact_w, exact_b = refit_linear(w, None, mean, cov, kept, alpha=alpha)  # float64 statistics: to rounding
    assert torch.allclose(exact_w, reference_w, atol=1e-8 * scale) and torch.allclose(exact_b, reference_b, atol=1e-8 * scale)


def test_the_caller_s_tensors_are_left_alone_and_all_removed_keeps_the_mean():
    generator = torch.Generator().manual_seed(4)
    w, bias = torch.randn(8, 12, dtype=torch.float64, generator=generator), torch.randn(8, dtype=torch.float64)
    x = torch.randn(100, 12, dtype=torch.float64, generator=generator)
    mean, cov = _moments(x)
    saved = w.clone(), bias.clone(), cov.clone()
    refit_linear(w, bias, mean, cov, torch.arange(6), alpha=1e-3)
    assert all(torch.equal(a, b) for a, b in zip((w, bias, cov), saved))
    empty_w, empty_b = refit_linear(w, bias, mean, cov, torch.arange(0), alpha=1e-3)
    assert empty_w.shape == (8, 0) and torch.allclose(empty_b, bias + w @ mean)
