"""Depthwise ('uvu') tensor product of node/edge features with edge spherical harmonics.

For each input block (mul x l1) and each spherical-harmonic irrep l2, every allowed output irrep
l3 (triangle and parity rules) becomes an output block of the same multiplicity; channels are not
mixed, so each path has ``mul`` weights (per edge, or shared). Paths whose output is not in the
target irreps are dropped, except 0e. Output blocks are sorted by (l, parity) and not merged.

The numerics are those of ``e3nn.o3.TensorProduct`` with ``irrep_normalization='component'`` and
``path_normalization='none'``: path coefficient sqrt(2 l3 + 1) times e3nn's Wigner 3j symbol.
:func:`reference_tensor_product` builds that e3nn layer; the test suite keeps it as the oracle for
the fast path implemented here. The fast path works in the "channels-last" layout of each irrep
block, (E, 2l+1, mul), where a linear layer is one plain matmul. For each input block it first
contracts the spherical harmonics with the coupling coefficients of all its paths (one small
matmul giving a (2l3+1) x (2l1+1) matrix per edge and path) and then applies these matrices to all
channels at once with one batched matmul:

    T[e, (p, m3), m1] = sum_{(l2, m2)} Y[e, (l2, m2)] C[m1, (l2, m2), (p, m3)]
    out[e, (p, m3), u] = w[e, p, u] * sum_{m1} T[e, (p, m3), m1] x[e, m1, u]

The outputs of all paths with the same irrep are concatenated along the channel axis in the
order of the (sorted) e3nn layout, so :meth:`DepthwiseTensorProduct.forward_cl` returns, for each
block of ``irreps_out.simplify()``, exactly the e3nn output block transposed to (E, 2l+1, mul).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

__all__ = ["DepthwiseTensorProduct", "reference_tensor_product", "to_channels_last", "from_channels_last"]


def to_channels_last(x: torch.Tensor, irreps: o3.Irreps) -> list[torch.Tensor]:
    """(N, irreps.dim) in e3nn layout -> one (N, 2l+1, mul) view per block of ``irreps``."""
    irreps = o3.Irreps(irreps)
    n = x.shape[0]
    sizes = [mul * ir.dim for mul, ir in irreps]
    parts = torch.split(x, sizes, dim=-1) if len(sizes) > 1 else (x,)
    return [p.reshape(n, mul, ir.dim).transpose(1, 2) for p, (mul, ir) in zip(parts, irreps)]


def from_channels_last(xs: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`to_channels_last`: blocks (N, 2l+1, mul) -> (N, dim) in e3nn layout."""
    n = xs[0].shape[0]
    outs = [x.transpose(1, 2).reshape(n, x.shape[1] * x.shape[2]) for x in xs]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


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
    omitted in :meth:`forward`. ``irreps_out`` (sorted, unmerged) tells the caller the layout;
    :meth:`forward_cl` takes and returns the channels-last blocks (see the module docstring).
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
        self.irreps_out_simple = self.irreps_out.simplify()
        inv = sorted_mid.p  # position of each path's block in the sorted output
        self.weight_numel = sum(self.irreps_in[i].mul for i, _, _ in paths)

        sh_offsets = [0]
        for _, ir in self.irreps_sh:
            sh_offsets.append(sh_offsets[-1] + ir.dim)
        dim_sh = self.irreps_sh.dim
        w_offsets = []
        w_offset = 0
        for i, _, _ in paths:
            w_offsets.append(w_offset)
            w_offset += self.irreps_in[i].mul

        # one coefficient matrix per input block: sh (E, dim_sh) @ coeff -> T (E, rows, dim_in), the
        # rows being the output components of all paths of the block, path after path
        self._blocks: list[dict] = []
        source: dict[int, tuple[int, int]] = {}  # path -> (block number, piece number)
        for i_in, (mul, ir_in) in enumerate(self.irreps_in):
            block_paths = [k for k, p in enumerate(paths) if p[0] == i_in]
            if not block_paths:
                continue
            rows = sum(paths[k][2].dim for k in block_paths)
            coeff = torch.zeros(dim_sh, rows, ir_in.dim)
            row = 0
            for n, k in enumerate(block_paths):
                _, j, ir_out = paths[k]
                w3j = o3.wigner_3j(ir_in.l, self.irreps_sh[j].ir.l, ir_out.l)  # (m1, m2, m3)
                coeff[sh_offsets[j] : sh_offsets[j + 1], row : row + ir_out.dim, :] = (
                    math.sqrt(ir_out.dim) * w3j.permute(1, 2, 0)
                )
                source[k] = (len(self._blocks), n)
                row += ir_out.dim
            name = f"coeff_{i_in}"
            self.register_buffer(name, coeff.reshape(dim_sh, rows * ir_in.dim), persistent=False)
            self._blocks.append(
                dict(i_in=i_in, mul=mul, dim_in=ir_in.dim, rows=rows, coeff=name,
                     pieces=[paths[k][2].dim for k in block_paths])
            )
        # each block of irreps_out.simplify() concatenates (along channels) the pieces of the paths
        # whose sorted positions it covers; its weights are those paths' weights in the same order
        order = sorted(range(len(paths)), key=lambda k: inv[k])
        self._groups: list[list[tuple[int, int]]] = []
        pos = 0
        for g, (mul, ir) in enumerate(self.irreps_out_simple):
            members = []
            covered = 0
            while covered < mul:
                k = order[pos]
                members.append(k)
                covered += self.irreps_in[paths[k][0]].mul
                pos += 1
            assert covered == mul and all(paths[k][2] == ir for k in members)
            self._groups.append([source[k] for k in members])
            widx = torch.cat([torch.arange(w_offsets[k], w_offsets[k] + self.irreps_in[paths[k][0]].mul) for k in members])
            self.register_buffer(f"widx_{g}", widx, persistent=False)
        # per path, for forward_linear_cl: (block, first row of its T rows, d3, output block, first channel)
        self._path_info: list[tuple[int, int, int, int, int]] = [None] * len(paths)  # type: ignore[list-item]
        for g, members in enumerate(self._groups):
            channel = 0
            for b, piece in members:
                k = [kk for kk, src in source.items() if src == (b, piece)][0]
                d3 = paths[k][2].dim
                self._path_info[k] = (b, sum(self._blocks[b]["pieces"][:piece]), d3, g, channel)
                channel += self.irreps_in[paths[k][0]].mul
        self._block_paths = [[k for k in range(len(paths)) if self._path_info[k][0] == b] for b in range(len(self._blocks))]
        self._w_offsets = w_offsets
        if internal_weights:
            self.weight = nn.Parameter(torch.randn(1, self.weight_numel))
        else:
            self.register_parameter("weight", None)

    def forward_cl(self, xs: list[torch.Tensor], sh: torch.Tensor, weight: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Channels-last tensor product: one (E, 2l+1, mul) tensor per block of ``irreps_in`` ->
        one (E, 2l+1, mul) tensor per block of ``irreps_out.simplify()``."""
        if weight is None:
            if self.weight is None:
                raise ValueError("this tensor product needs per-edge weights")
            weight = self.weight
        n = sh.shape[0]
        pieces = []
        for block in self._blocks:
            xb = xs[block["i_in"]]
            t = (sh @ getattr(self, block["coeff"])).view(n, block["rows"], block["dim_in"])
            # all paths of the block at once: (E, rows, d1) @ (E, d1, mul)
            y = t * xb if block["dim_in"] == 1 else torch.bmm(t, xb)
            pieces.append(torch.split(y, block["pieces"], dim=1) if len(block["pieces"]) > 1 else (y,))
        outs = []
        for g, members in enumerate(self._groups):
            parts = [pieces[b][p] for b, p in members]
            y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
            outs.append(y * weight.index_select(1, getattr(self, f"widx_{g}")).unsqueeze(1))
        return outs

    def forward_linear_cl(
        self,
        xs: list[torch.Tensor],
        sh: torch.Tensor,
        mats: list[torch.Tensor | None],
        weight: torch.Tensor | None = None,
    ) -> list[torch.Tensor | None]:
        """The tensor product followed by a linear map, without building the product's output.

        ``mats[g]`` (C_g, V_g) maps the channels of block g of ``irreps_out.simplify()`` (None:
        block not needed); returns ``forward_cl(xs, sh, weight)[g] @ mats[g]``, (E, 2l+1, V_g), for
        every g (None where nothing contributes). An input block may be None (known to be zero:
        skipped) or have a batch size of 1 (the same features on every edge). ``weight`` are per-edge weights (E, weight_numel); ``None`` means weights of one,
        so a caller with shared weights folds them into the rows of ``mats``.

        Path by path (k: input block b with 2l1+1 = d1 components and u channels, output d3
        components), the cheaper order is used: ``(T_k @ x_b) @ W_k`` ("late") or
        ``T_k @ (x_b @ W_k)`` ("early", fewer operations when d1 < d3; the per-edge weight then
        multiplies x_b). Both give the same numbers up to rounding.
        """
        n = sh.shape[0]
        out: list[torch.Tensor | None] = [None] * len(self._groups)
        # early paths: (T_k, z_k) per output block, contracted at the end in one batched matmul
        terms: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self._groups]
        # tensors used piecewise are cut with split/unbind (one backward node that concatenates the
        # gradients), not with slicing (one zero-filled full-size gradient per slice)
        w_blocks = None
        if weight is not None:
            sizes = [len(self._block_paths[b]) * blk["mul"] for b, blk in enumerate(self._blocks)]
            w_blocks = torch.split(weight, sizes, dim=1) if len(sizes) > 1 else (weight,)
        for b, block in enumerate(self._blocks):
            paths_b = self._block_paths[b]
            ks = [k for k in paths_b if mats[self._path_info[k][3]] is not None]
            xb = xs[block["i_in"]]
            if not ks or xb is None:
                continue
            d1, u = block["dim_in"], block["mul"]
            t = (sh @ getattr(self, block["coeff"])).view(n, block["rows"], d1)
            t_parts = torch.split(t, block["pieces"], dim=1) if len(paths_b) > 1 else (t,)
            wb = None
            if w_blocks is not None:
                wb = w_blocks[b].reshape(weight.shape[0], len(paths_b), u)  # type: ignore[union-attr]
            early, late = [], []
            for k in ks:
                _, _, d3, g, _ = self._path_info[k]
                v = mats[g].shape[1]  # type: ignore[union-attr]
                cost_early = d1 * u * v + d3 * d1 * v + 2 * d1 * v
                cost_late = d3 * d1 * u + d3 * u * v + 2 * d3 * u
                (early if cost_early <= cost_late else late).append(k)
            if early:
                if wb is None:
                    # one matmul for all early paths of the block: x_b @ [W_k1 | W_k2 | ...]
                    ws = [self._rows(mats, k) for k in early]
                    w_all = torch.cat(ws, dim=1) if len(ws) > 1 else ws[0]
                    z_all = (xb.reshape(xb.shape[0] * d1, u) @ w_all).view(xb.shape[0], d1, w_all.shape[1])
                    zs = torch.split(z_all, [w_k.shape[1] for w_k in ws], dim=2) if len(ws) > 1 else (z_all,)
                else:
                    xw = (xb.unsqueeze(2) * wb.unsqueeze(1)).unbind(2)  # per path (n, d1, u)
                    zs = []
                    for k in early:
                        w_k = self._rows(mats, k)
                        zs.append((xw[paths_b.index(k)].reshape(n * d1, u) @ w_k).view(n, d1, w_k.shape[1]))
                for k, z in zip(early, zs):
                    terms[self._path_info[k][3]].append((t_parts[paths_b.index(k)], z))
            w_paths = wb.unbind(1) if (wb is not None and late) else None
            for k in late:
                _, _, d3, g, _ = self._path_info[k]
                tk = t_parts[paths_b.index(k)]
                piece = tk * xb if d1 == 1 else torch.bmm(tk, xb.expand(n, -1, -1))
                if w_paths is not None:
                    piece = piece * w_paths[paths_b.index(k)].unsqueeze(1)
                w_k = self._rows(mats, k)
                y = (piece.reshape(n * d3, u) @ w_k).view(n, d3, w_k.shape[1])
                out[g] = y if out[g] is None else out[g] + y
        for g, pairs in enumerate(terms):
            if not pairs:
                continue
            if len(pairs) == 1:
                tk, z = pairs[0]
                y = tk * z if tk.shape[2] == 1 else torch.bmm(tk, z.expand(n, -1, -1))
            else:
                # sum_k T_k @ z_k = [T_1 | T_2 | ...] @ [z_1; z_2; ...]: one larger batched matmul
                t_cat = torch.cat([tk for tk, _ in pairs], dim=2)
                z_cat = torch.cat([z.expand(n, -1, -1) for _, z in pairs], dim=1)
                y = torch.bmm(t_cat, z_cat)
            out[g] = y if out[g] is None else out[g] + y
        return out

    def _rows(self, mats: list[torch.Tensor | None], k: int) -> torch.Tensor:
        _, _, _, g, c = self._path_info[k]
        u = self.irreps_in[self.paths[k][0]].mul
        return mats[g][c : c + u]  # type: ignore[index]

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return from_channels_last(self.forward_cl(to_channels_last(x, self.irreps_in), sh, weight))


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
