"""Depthwise ('uvu') tensor product of node/edge features with edge spherical harmonics.

For each input block (mul x l1) and each spherical-harmonic irrep l2, every allowed output irrep
l3 (triangle and parity rules) becomes an output block of the same multiplicity; channels are not
mixed, so each path has ``mul`` weights (per edge, or shared). Paths whose output is not in the
target irreps are dropped, except 0e. Output blocks are sorted by (l, parity) and not merged.

The numerics are those of ``e3nn.o3.TensorProduct`` with ``irrep_normalization='component'`` and
``path_normalization='none'``: path coefficient sqrt(2 l3 + 1) times e3nn's Wigner 3j symbol.
:func:`reference_tensor_product` builds that e3nn layer; the test suite keeps it as the oracle for
the fast path implemented here, which merges all paths of one input block into a single matmul:

    out[e, u, (p, m3)] = w[e, p, u] * sum_{m1, (l2, m2)} x[e, u, m1] Y[e, (l2, m2)] C[(m1, l2, m2), (p, m3)]
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

__all__ = ["DepthwiseTensorProduct", "reference_tensor_product"]


def _instructions(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps) -> list[tuple[int, int, o3.Irrep]]:
    """(i_in, i_sh, ir_out) for every kept path, in creation order (this is the weight order)."""
    target = {ir for _, ir in irreps_target}
    paths = []
    for i, (_, ir_in) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in target or ir_out == o3.Irrep("0e"):
                    paths.append((i, j, ir_out))
    return paths


class DepthwiseTensorProduct(nn.Module):
    """x (E, irreps_in.dim) (x) Y (E, irreps_sh.dim) -> (E, irreps_out.dim), weights (E or 1, weight_numel).

    With ``internal_weights=True`` the module owns one shared weight vector and ``weight`` must be
    omitted in :meth:`forward`. ``irreps_out`` (sorted, unmerged) tells the caller the layout.
    """

    def __init__(
        self,
        irreps_in: str | o3.Irreps,
        irreps_sh: str | o3.Irreps,
        irreps_target: str | o3.Irreps,
        internal_weights: bool = False,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps(irreps_sh)
        paths = _instructions(self.irreps_in, self.irreps_sh, o3.Irreps(irreps_target))
        if not paths:
            raise ValueError("the tensor product has no allowed path")
        self.paths = paths
        mid = o3.Irreps([(self.irreps_in[i].mul, ir) for i, _, ir in paths])
        sorted_mid = mid.sort()
        self.irreps_out = sorted_mid.irreps
        inv = sorted_mid.p  # position of each path's block in the sorted output
        self.weight_numel = sum(self.irreps_in[i].mul for i, _, _ in paths)

        sh_offsets = [0]
        for _, ir in self.irreps_sh:
            sh_offsets.append(sh_offsets[-1] + ir.dim)
        dim_sh = self.irreps_sh.dim
        out_slices = self.irreps_out.slices()

        # group the paths by input block; one dense coefficient matrix per input block
        self._blocks: list[dict] = []
        w_offset = 0
        w_offsets = []
        for i, j, ir_out in paths:
            w_offsets.append(w_offset)
            w_offset += self.irreps_in[i].mul
        for i_in, (mul, ir_in) in enumerate(self.irreps_in):
            block_paths = [k for k, p in enumerate(paths) if p[0] == i_in]
            if not block_paths:
                continue
            dim_out = sum(paths[k][2].dim for k in block_paths)
            coeff = torch.zeros(ir_in.dim, dim_sh, dim_out)
            col_path = []
            col = 0
            pieces = []
            for n, k in enumerate(block_paths):
                _, j, ir_out = paths[k]
                ir_sh = self.irreps_sh[j].ir
                w3j = o3.wigner_3j(ir_in.l, ir_sh.l, ir_out.l)
                coeff[:, sh_offsets[j] : sh_offsets[j + 1], col : col + ir_out.dim] = math.sqrt(ir_out.dim) * w3j
                col_path += [n] * ir_out.dim
                pieces.append((col, ir_out.dim, inv[k]))
                col += ir_out.dim
            name = f"coeff_{i_in}"
            self.register_buffer(name, coeff.reshape(ir_in.dim * dim_sh, dim_out), persistent=False)
            self.register_buffer(f"colpath_{i_in}", torch.tensor(col_path, dtype=torch.long), persistent=False)
            self._blocks.append(
                dict(
                    i_in=i_in,
                    mul=mul,
                    dim_in=ir_in.dim,
                    in_slice=self.irreps_in.slices()[i_in],
                    w_index=[w_offsets[k] for k in block_paths],
                    n_paths=len(block_paths),
                    pieces=pieces,
                    coeff=name,
                )
            )
        # where each sorted output block comes from: (block number, column offset, dim)
        self._out_sources: list[tuple[int, int, int]] = [None] * len(self.irreps_out)  # type: ignore[list-item]
        for b, block in enumerate(self._blocks):
            for col, dim, pos in block["pieces"]:
                self._out_sources[pos] = (b, col, dim)
        self.out_slices = out_slices
        if internal_weights:
            self.weight = nn.Parameter(torch.randn(1, self.weight_numel))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            if self.weight is None:
                raise ValueError("this tensor product needs per-edge weights")
            weight = self.weight
        n = x.shape[0]
        results = []
        for block in self._blocks:
            mul, d1 = block["mul"], block["dim_in"]
            xb = x[:, block["in_slice"]].reshape(n, mul, d1)
            # outer product with all spherical harmonics at once, then one matmul for every path
            outer = (xb.unsqueeze(-1) * sh.unsqueeze(1).unsqueeze(1)).reshape(n, mul, d1 * sh.shape[1])
            y = outer @ getattr(self, block["coeff"])  # (n, mul, dim_out)
            start = block["w_index"][0]
            w = weight[:, start : start + block["n_paths"] * mul].reshape(weight.shape[0], block["n_paths"], mul)
            w = w.transpose(1, 2).index_select(2, getattr(self, f"colpath_{block['i_in']}"))
            results.append(y * w)
        outs = []
        for b, col, dim in self._out_sources:
            y = results[b]
            outs.append(y[:, :, col : col + dim].reshape(n, y.shape[1] * dim))
        return torch.cat(outs, dim=-1)


def reference_tensor_product(
    irreps_in: str | o3.Irreps,
    irreps_sh: str | o3.Irreps,
    irreps_target: str | o3.Irreps,
) -> o3.TensorProduct:
    """The plain e3nn layer that :class:`DepthwiseTensorProduct` computes (same irreps_out, same
    weight layout), with external per-edge weights. Kept as the readable oracle for tests."""
    irreps_in = o3.Irreps(irreps_in)
    irreps_sh = o3.Irreps(irreps_sh)
    paths = _instructions(irreps_in, irreps_sh, o3.Irreps(irreps_target))
    mid = o3.Irreps([(irreps_in[i].mul, ir) for i, _, ir in paths])
    sorted_mid = mid.sort()
    instructions = [(i, j, sorted_mid.p[k], "uvu", True) for k, (i, j, _) in enumerate(paths)]
    return o3.TensorProduct(
        irreps_in,
        irreps_sh,
        sorted_mid.irreps,
        instructions,
        irrep_normalization="component",
        path_normalization="none",
        internal_weights=False,
        shared_weights=False,
    )
