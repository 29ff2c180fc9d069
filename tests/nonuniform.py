"""Test helper: make one layer of a model narrower, as pruning does (a model with non-uniform layers)."""
import torch


def shrink_mlp(model, layer: int, keep: int):
    """Keep the first `keep` MLP channels of `layer` (rows of gate/up_proj, columns of down_proj)."""
    mlp = model.model.layers[layer].mlp
    for name in ("gate_proj", "up_proj"):
        old = getattr(mlp, name)
        new = torch.nn.Linear(old.in_features, keep, bias=False)
        new.weight.data = old.weight.data[:keep].clone()
        setattr(mlp, name, new)
    old = mlp.down_proj
    mlp.down_proj = torch.nn.Linear(keep, old.out_features, bias=False)
    mlp.down_proj.weight.data = old.weight.data[:, :keep].clone()
    return model
