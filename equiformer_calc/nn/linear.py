"""Equivariant linear layer over irreps, biases on 0e scalars.

Numerically e3nn's ``o3.Linear`` (weights N(0, 1) divided by sqrt(fan-in) per output irrep,
'element' path normalisation); the test suite keeps e3nn's layer as the oracle. This version
splits the input once with ``torch.split`` instead of slicing it block by block, so its backward
pass allocates one gradient buffer instead of one zero-filled copy of the input per block, and
does one matmul per (input block, output irrep) pair.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

__all__ = ["IrrepsLinear"]


class IrrepsLinear(nn.Module):
    """Mixes channels within each irrep type. (N, irreps_in.dim) -> (N, irreps_out.dim).

    ``bias=True`` adds a learnable bias to every 0e output channel.
    """

    def __init__(self, irreps_in: str | o3.Irreps, irreps_out: str | o3.Irreps, bias: bool = True) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self._in_sizes = [mul * ir.dim for mul, ir in self.irreps_in]
        # paths: every input block feeds every output block of the same irrep
        self._paths: list[tuple[int, int]] = []
        fan_in: dict[o3.Irrep, int] = {}
        for _, (mul, ir) in enumerate(self.irreps_in):
            fan_in[ir] = fan_in.get(ir, 0) + mul
        self.weights = nn.ParameterList()
        self._alpha: list[float] = []
        for i_out, (mul_out, ir_out) in enumerate(self.irreps_out):
            for i_in, (mul_in, ir_in) in enumerate(self.irreps_in):
                if ir_in == ir_out:
                    self._paths.append((i_in, i_out))
                    self.weights.append(nn.Parameter(torch.randn(mul_in, mul_out)))
                    self._alpha.append(1.0 / math.sqrt(fan_in[ir_in]))
        self.has_bias = [bool(bias) and ir.l == 0 and ir.p == 1 for _, ir in self.irreps_out]
        n_bias = sum(mul for (mul, _), b in zip(self.irreps_out, self.has_bias) if b)
        self.bias = nn.Parameter(torch.zeros(n_bias)) if n_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        blocks = torch.split(x, self._in_sizes, dim=-1) if len(self._in_sizes) > 1 else (x,)
        blocks = [b.reshape(n, mul, ir.dim) for b, (mul, ir) in zip(blocks, self.irreps_in)]
        out_blocks: list[torch.Tensor | None] = [None] * len(self.irreps_out)
        for (i_in, i_out), w, alpha in zip(self._paths, self.weights, self._alpha):
            # (n, mul_in, d) -> (n, d, mul_in) @ (mul_in, mul_out) -> (n, d, mul_out)
            y = torch.matmul(blocks[i_in].transpose(1, 2), w * alpha)
            out_blocks[i_out] = y if out_blocks[i_out] is None else out_blocks[i_out] + y
        outs = []
        ib = 0
        for k, (mul, ir) in enumerate(self.irreps_out):
            y = out_blocks[k]
            if y is None:
                y = x.new_zeros(n, ir.dim, mul)
            if self.has_bias[k]:
                y = y + self.bias[ib : ib + mul]
                ib += mul
            outs.append(y.transpose(1, 2).reshape(n, mul * ir.dim))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"
