"""Stochastic depth (drop path) per graph, for regularising the residual blocks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GraphDropPath"]


class GraphDropPath(nn.Module):
    """In training, zero a residual branch for whole graphs with probability ``p`` (rescaling the
    kept ones by 1/(1-p)); the identity in evaluation. x (N, C), batch (N,) -> (N, C)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = (torch.rand(num_graphs, device=x.device) >= self.p).to(x.dtype) / (1.0 - self.p)
        return x * keep[batch].unsqueeze(-1)
