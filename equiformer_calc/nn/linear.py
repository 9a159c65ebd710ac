"""Equivariant linear layer over irreps, biases on 0e scalars.

Numerically e3nn's ``o3.Linear`` (weights N(0, 1) divided by sqrt(fan-in) per output irrep,
'element' path normalisation); the test suite keeps e3nn's layer as the oracle. The work is done
in the channels-last layout of each irrep block, (N, 2l+1, mul), where every (input block,
output block) path is one plain matmul (N (2l+1), mul_in) @ (mul_in, mul_out):
:meth:`IrrepsLinear.forward_cl` takes and returns that layout (the attention layer keeps its
per-edge features in it), :meth:`IrrepsLinear.forward` converts from and to e3nn's layout.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from e3nn import o3
from torch import nn

from .tensor_product import from_channels_last, to_channels_last

__all__ = ["IrrepsLinear", "LinearPath"]


class LinearPath(NamedTuple):
    """One path of an :class:`IrrepsLinear` (like e3nn's ``o3.Linear.instructions``): input block
    ``i_in`` of ``irreps_in`` feeds output block ``i_out`` of ``irreps_out`` (same irrep) through
    the ``(mul_in, mul_out)`` matrix ``weights[k]`` scaled by ``alpha`` = 1/sqrt(fan-in)."""

    i_in: int
    i_out: int
    alpha: float


class IrrepsLinear(nn.Module):
    """Mixes channels within each irrep type. (N, irreps_in.dim) -> (N, irreps_out.dim).

    ``bias=True`` adds a learnable bias to every 0e output channel.

    The layer's structure is public for code that fuses it with other operations (the attention's
    and the edge-degree embedding's fused tensor product + linear): ``paths`` (one
    :class:`LinearPath` per entry of ``weights``), :meth:`path_weights` (each path's scaled
    matrix), ``has_bias`` and :meth:`output_bias` (the bias of one output block).
    """

    def __init__(self, irreps_in: str | o3.Irreps, irreps_out: str | o3.Irreps, bias: bool = True) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        # paths: every input block feeds every output block of the same irrep
        paths: list[LinearPath] = []
        fan_in: dict[o3.Irrep, int] = {}
        for _, (mul, ir) in enumerate(self.irreps_in):
            fan_in[ir] = fan_in.get(ir, 0) + mul
        self.weights = nn.ParameterList()
        for i_out, (mul_out, ir_out) in enumerate(self.irreps_out):
            for i_in, (mul_in, ir_in) in enumerate(self.irreps_in):
                if ir_in == ir_out:
                    paths.append(LinearPath(i_in, i_out, 1.0 / math.sqrt(fan_in[ir_in])))
                    self.weights.append(nn.Parameter(torch.randn(mul_in, mul_out)))
        #: one :class:`LinearPath` per entry of ``weights``, output-block major
        self.paths: tuple[LinearPath, ...] = tuple(paths)
        self.has_bias = [bool(bias) and ir.l == 0 and ir.p == 1 for _, ir in self.irreps_out]
        n_bias = sum(mul for (mul, _), b in zip(self.irreps_out, self.has_bias) if b)
        self.bias = nn.Parameter(torch.zeros(n_bias)) if n_bias else None
        # where each output block's bias starts
        self._bias_start: list[int] = []
        ib = 0
        for (mul, _), b in zip(self.irreps_out, self.has_bias):
            self._bias_start.append(ib)
            ib += mul if b else 0

    def path_weights(self) -> list[tuple[LinearPath, torch.Tensor]]:
        """Each path with its scaled ``(mul_in, mul_out)`` matrix ``weights[k] * alpha`` (the
        matrix the layer multiplies by; differentiable)."""
        return [(path, w * path.alpha) for path, w in zip(self.paths, self.weights)]

    def output_bias(self, i_out: int) -> torch.Tensor | None:
        """The ``(mul,)`` bias of output block ``i_out``, or None when that block has none."""
        if not self.has_bias[i_out]:
            return None
        start = self._bias_start[i_out]
        return self.bias[start : start + self.irreps_out[i_out].mul]

    def forward_cl(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Channels-last: one (N, 2l+1, mul_in) tensor per block of ``irreps_in`` -> one
        (N, 2l+1, mul_out) tensor per block of ``irreps_out``."""
        n = xs[0].shape[0] if xs else 0
        out: list[torch.Tensor | None] = [None] * len(self.irreps_out)
        for (i_in, i_out, _), w in self.path_weights():
            mul_in, ir = self.irreps_in[i_in]
            x = xs[i_in].reshape(n * ir.dim, mul_in)
            bias = self.output_bias(i_out)
            if out[i_out] is None and bias is not None:
                y = torch.addmm(bias, x, w)
            elif out[i_out] is None:
                y = torch.mm(x, w)
            else:
                y = torch.addmm(out[i_out], x, w)
            out[i_out] = y
        results = []
        for i_out, (mul, ir) in enumerate(self.irreps_out):
            y = out[i_out]
            if y is None:
                shape = (n * ir.dim, mul)
                y = xs[0].new_zeros(shape) if xs else torch.zeros(shape)
                bias = self.output_bias(i_out)
                if bias is not None:
                    y = y + bias
            results.append(y.view(n, ir.dim, mul))
        return results

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_channels_last(self.forward_cl(to_channels_last(x, self.irreps_in)))

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"
