"""Equivariant graph attention (Equiformer's contribution), with a cutoff-smooth softmax."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from e3nn import o3
from torch import nn

from .activation import SmoothLeakyReLU, make_gate
from .edge_chunks import EdgeChunk, checkpointed_sum
from .linear import IrrepsLinear
from .radial import RadialMLP
from .tensor_product import DepthwiseTensorProduct, from_channels_last, to_channels_last

__all__ = ["GraphAttention", "envelope_softmax", "plain_softmax"]


def envelope_softmax(logits: torch.Tensor, envelope: torch.Tensor, dst: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """alpha_ij = c_ij exp(a_ij) / (1 + sum_k c_ik exp(a_ik)) over the edges entering each node.

    logits (E, H), envelope (E,), dst (E,) -> (E, H). The envelope c makes an edge's weight vanish
    smoothly at the cutoff; the extra 1 (a zero-valued "null" edge with logit 0) makes the weights
    vanish as well when the last neighbour leaves, so the attention output is continuous.
    The per-node maximum subtracted for stability is detached: the ratio does not depend on it.
    """
    heads = logits.shape[1]
    with torch.no_grad():
        shift = torch.zeros(num_nodes, heads, dtype=logits.dtype, device=logits.device)
        shift = shift.scatter_reduce(0, dst.unsqueeze(-1).expand_as(logits), logits, reduce="amax", include_self=True)
    num = envelope.unsqueeze(-1) * torch.exp(logits - shift[dst])
    den = torch.exp(-shift).index_add(0, dst, num)
    return num / den[dst]


def plain_softmax(logits: torch.Tensor, dst: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """alpha_ij = exp(a_ij) / sum_k exp(a_ik) over the edges entering each node, as the reference
    Equiformer computes it (PyG's softmax, with its 1e-16 in the denominator). logits (E, H),
    dst (E,) -> (E, H). Not continuous when a neighbour crosses the cutoff: each edge keeps a
    finite weight up to the cutoff, and the weights renormalise when it leaves."""
    heads = logits.shape[1]
    with torch.no_grad():
        shift = torch.full((num_nodes, heads), float("-inf"), dtype=logits.dtype, device=logits.device)
        shift = shift.scatter_reduce(0, dst.unsqueeze(-1).expand_as(logits), logits, reduce="amax", include_self=True)
    num = torch.exp(logits - shift[dst])
    den = torch.zeros(num_nodes, heads, dtype=logits.dtype, device=logits.device).index_add(0, dst, num) + 1e-16
    return num / den[dst]


#: attention softmax variants: ours (envelope-weighted, with a null neighbour) or the reference's
SOFTMAXES = ("envelope", "plain")


def _can_fuse(tp: DepthwiseTensorProduct, consumers: list[IrrepsLinear]) -> bool:
    """Whether linear layers can be fused into the tensor product before them: they read exactly
    its simplified output blocks, one block per irrep (so one path per consumer output block)."""
    irreps = tp.irreps_out_simple
    unique = len({ir for _, ir in irreps}) == len(irreps)
    return unique and all(lin.irreps_in == irreps for lin in consumers)


class GraphAttention(nn.Module):
    """Multi-head equivariant graph attention over a radius graph.

    1. m_ij = Linear_src(x_j) + Linear_dst(x_i);  h_ij = DTP(m_ij, Y(r_ij); w(r_ij) c(r_ij)).
    2. Logits: MLP attention (linear -> smooth leaky ReLU -> dot with a per-head vector) or
       dot-product attention (query of x_i . key of h_ij / sqrt(d)).
    3. Values: non-linear (linear -> gate -> second DTP with shared weights -> linear) or linear.
    4. out_i = Linear(sum_j alpha_ij v_ij), alpha from :func:`envelope_softmax` (``softmax="envelope"``)
       or, as the reference code, :func:`plain_softmax` (``softmax="plain"``).

    All per-edge features stay in the channels-last layout (E, 2l+1, mul) of each irrep block
    (see ``tensor_product.py``), in which every linear layer is one plain matmul; only node-level
    tensors are converted from and to e3nn's layout.

    forward: x (N, irreps_node.dim), sh (E, irreps_sh.dim), radial basis (E, B), envelope (E,),
    edge_index (2, E) [src, dst] -> (N, irreps_out.dim).
    """

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_head: o3.Irreps,
        num_heads: int,
        num_basis: int,
        fc_neurons: tuple[int, ...],
        attention: str = "mlp",
        nonlinear_message: bool = True,
        alpha_drop: float = 0.0,
        proj_drop: float = 0.0,
        alpha_hidden: int | None = None,
        softmax: str = "envelope",
    ) -> None:
        super().__init__()
        if attention not in ("mlp", "dot"):
            raise ValueError(f"attention must be 'mlp' or 'dot', got {attention!r}")
        if softmax not in SOFTMAXES:
            raise ValueError(f"softmax must be one of {SOFTMAXES}, got {softmax!r}")
        self.attention = attention
        self.softmax = softmax
        self.nonlinear_message = nonlinear_message
        self.num_heads = num_heads
        irreps_node, irreps_sh, irreps_head = o3.Irreps(irreps_node), o3.Irreps(irreps_sh), o3.Irreps(irreps_head)
        # heads x head irreps, merged per irrep type: column c belongs to head head_of_col[c]
        irreps_heads = o3.Irreps([(mul * num_heads, ir) for mul, ir in irreps_head]).sort().irreps.simplify()
        head_of_col = []
        for mul, ir in irreps_heads:
            head_of_col += [h for h in range(num_heads) for _ in range(mul // num_heads * ir.dim)]
        self.register_buffer("head_of_col", torch.tensor(head_of_col, dtype=torch.long), persistent=False)
        self.irreps_heads = irreps_heads
        scalars_per_head = sum(m for m, ir in irreps_head if ir.l == 0 and ir.p == 1)
        self.alpha_hidden = alpha_hidden or scalars_per_head
        irreps_alpha = o3.Irreps(f"{num_heads * self.alpha_hidden}x0e")

        self.merge_src = IrrepsLinear(irreps_node, irreps_node, bias=True)
        self.merge_dst = IrrepsLinear(irreps_node, irreps_node, bias=False)
        self.dtp = DepthwiseTensorProduct(irreps_node, irreps_sh, irreps_node)
        self.radial = RadialMLP(num_basis, fc_neurons, self.dtp.weight_numel)
        # the sorted DTP output has the memory layout of its simplified irreps: linear layers read it
        # as such (same function, fewer and larger blocks)
        dtp_out = self.dtp.irreps_out.simplify()
        self.alpha_linear = IrrepsLinear(dtp_out, irreps_alpha, bias=True)
        if attention == "mlp":
            self.alpha_act = SmoothLeakyReLU(0.2)
            self.alpha_dot = nn.Parameter(torch.empty(num_heads, self.alpha_hidden))
            bound = math.sqrt(6.0 / (num_heads + self.alpha_hidden))
            nn.init.uniform_(self.alpha_dot, -bound, bound)
        else:
            self.query = IrrepsLinear(irreps_node, irreps_alpha, bias=False)
        if nonlinear_message:
            self.gate = make_gate(irreps_node)
            self.value_linear = IrrepsLinear(dtp_out, self.gate.irreps_in, bias=True)
            self.value_dtp = DepthwiseTensorProduct(self.gate.irreps_out, irreps_sh, irreps_heads, internal_weights=True)
            self.value_out = IrrepsLinear(self.value_dtp.irreps_out.simplify(), irreps_heads, bias=True)
        else:
            self.value_out = IrrepsLinear(dtp_out, irreps_heads, bias=True)
        self.alpha_dropout = nn.Dropout(alpha_drop) if alpha_drop > 0 else None
        self.proj = IrrepsLinear(irreps_heads, irreps_out, bias=True)
        self.proj_dropout = nn.Dropout(proj_drop) if proj_drop > 0 else None
        # channels-last bookkeeping: the head of every channel of each value block
        self._num_value_blocks = len(irreps_heads)
        for k, ((mul, ir), sl) in enumerate(zip(irreps_heads, irreps_heads.slices())):
            heads = torch.tensor(head_of_col[sl.start : sl.stop : ir.dim], dtype=torch.long)
            self.register_buffer(f"head_of_channel_{k}", heads, persistent=False)
        self._gate_in_cl = nonlinear_message and self._gate_is_simple()
        # tensor product + linear fused (forward_linear_cl): the consumers read the product's blocks
        first = [self.alpha_linear, self.value_linear if nonlinear_message else self.value_out]
        self._fused = _can_fuse(self.dtp, first) and (
            not nonlinear_message or _can_fuse(self.value_dtp, [self.value_out])
        )

    def _gate_is_simple(self) -> bool:
        """True when the gate's input is [scalars + gates] as one 0e block followed by exactly the
        gated blocks, and its output [scalars] + gated blocks: then :meth:`_gate_cl` applies it in
        the channels-last layout. Otherwise the gate runs in e3nn's layout."""
        g = self.gate
        scalars, gates, gated = o3.Irreps(g.irreps_scalars), o3.Irreps(g.irreps_gates), o3.Irreps(g.irreps_gated)
        zero = o3.Irrep("0e")
        if len(scalars) != 1 or scalars[0].ir != zero or any(ir != zero for _, ir in gates):
            return False
        expected_in = [(scalars.num_irreps + gates.num_irreps, zero)] + [(m, ir) for m, ir in gated]
        expected_out = [(scalars.num_irreps, zero)] + [(m, ir) for m, ir in gated]
        return [(m, ir) for m, ir in o3.Irreps(g.irreps_in)] == expected_in and [
            (m, ir) for m, ir in o3.Irreps(g.irreps_out)
        ] == expected_out

    def _gate_cl(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """e3nn's Gate on channels-last blocks: act(scalars), sigmoid(gates) * gated."""
        g = self.gate
        n_scalars = g.irreps_scalars.num_irreps
        scalars, gates = torch.split(xs[0], [n_scalars, xs[0].shape[-1] - n_scalars], dim=-1)
        out = [g.act_scalars(scalars)]
        if len(xs) > 1:
            gates = g.act_gates(gates)
            parts = torch.split(gates, [x.shape[-1] for x in xs[1:]], dim=-1) if len(xs) > 2 else (gates,)
            out += [x * gate for x, gate in zip(xs[1:], parts)]
        return out

    def _linear_after_tp(
        self,
        tp: DepthwiseTensorProduct,
        xs: list[torch.Tensor],
        sh: torch.Tensor,
        consumers: list[IrrepsLinear],
        weight: torch.Tensor | None,
    ) -> list[list[torch.Tensor]]:
        """``[lin.forward_cl(tp.forward_cl(xs, sh, w)) for lin in consumers]`` computed with
        :meth:`DepthwiseTensorProduct.forward_linear_cl`: the weights of all consumers reading one
        output block are concatenated, and a shared tensor-product weight is folded into them."""
        mats: list[torch.Tensor | None] = []
        layout: list[list[tuple[int, int] | None]] = [[None] * len(c.irreps_out) for c in consumers]
        for t in range(len(tp.irreps_out_simple)):
            cols, start = [], 0
            for c, lin in enumerate(consumers):
                for (i_in, i_out, _), w in lin.path_weights():
                    if i_in == t:
                        cols.append(w)
                        layout[c][i_out] = (t, start)
                        start += w.shape[1]
            mat = (cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)) if cols else None
            if mat is not None and weight is None and tp.weight is not None:
                mat = tp.weight[0].index_select(0, getattr(tp, f"widx_{t}")).unsqueeze(1) * mat
            mats.append(mat)
        ys = tp.forward_linear_cl(xs, sh, mats, weight)
        # cut each output block into its consumers' columns with one split
        parts: dict[tuple[int, int], torch.Tensor] = {}
        for t, y in enumerate(ys):
            if y is None:
                continue
            cuts = sorted((loc[1], c, j) for c, lay in enumerate(layout) for j, loc in enumerate(lay) if loc and loc[0] == t)
            widths = [consumers[c].irreps_out[j].mul for _, c, j in cuts]
            pieces = torch.split(y, widths, dim=-1) if len(widths) > 1 else (y,)
            for (_, c, j), piece in zip(cuts, pieces):
                parts[(c, j)] = piece
        n = sh.shape[0]
        results = []
        for c, lin in enumerate(consumers):
            outs = []
            for j, (mul, ir) in enumerate(lin.irreps_out):
                if layout[c][j] is None:
                    y = sh.new_zeros(n, ir.dim, mul)
                else:
                    y = parts[(c, j)]
                bias = lin.output_bias(j)
                if bias is not None:
                    y = y + bias
                outs.append(y)
            results.append(outs)
        return results

    def forward(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        basis: torch.Tensor,
        envelope: torch.Tensor,
        edge_index: torch.Tensor,
        chunks: Sequence[EdgeChunk] | None = None,
    ) -> torch.Tensor:
        """``chunks`` (low-memory mode, see ``edge_chunks.py``): the same edges cut at atom
        boundaries; the per-edge work then runs chunk by chunk under activation checkpointing
        (same numbers to round-off). Otherwise ``sh``, ``basis``, ``envelope``, ``edge_index``
        are used at once."""
        x_cl = to_channels_last(x, self.merge_src.irreps_in)
        node_src = self.merge_src.forward_cl(x_cl)
        node_dst = self.merge_dst.forward_cl(x_cl)
        query = self.query(x).view(-1, self.num_heads, self.alpha_hidden) if self.attention == "dot" else None
        if chunks is None:
            summed = self._edge_sums(node_src, node_dst, query, sh, basis, envelope, edge_index)
        else:
            summed = checkpointed_sum(
                self._edge_sums, chunks, node_src, node_dst, query, params=list(self.parameters()),
                random=self.training and self.alpha_dropout is not None,
            )
        out = self.proj(from_channels_last(summed))
        if self.proj_dropout is not None:
            out = self.proj_dropout(out)
        return out

    def _edge_sums(
        self,
        node_src: list[torch.Tensor],
        node_dst: list[torch.Tensor],
        query: torch.Tensor | None,
        sh: torch.Tensor,
        basis: torch.Tensor,
        envelope: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> list[torch.Tensor]:
        """The per-edge part of the attention: messages, weights and values of the given edges,
        summed into their destination atoms (channels-last value blocks, each (N, 2l+1, mul)).
        Every destination's incoming edges must all be among them (the softmax normalises over them)."""
        src, dst = edge_index[0], edge_index[1]
        n = node_src[0].shape[0]
        message = [a.index_select(0, src) + b.index_select(0, dst) for a, b in zip(node_src, node_dst)]
        weight = self.radial(basis) * envelope.unsqueeze(-1)
        if self._fused:
            second = self.value_linear if self.nonlinear_message else self.value_out
            a, v = self._linear_after_tp(self.dtp, message, sh, [self.alpha_linear, second], weight)
            a = a[0]
        else:
            h = self.dtp.forward_cl(message, sh, weight)
            a = self.alpha_linear.forward_cl(h)[0]
            v = self.value_linear.forward_cl(h) if self.nonlinear_message else self.value_out.forward_cl(h)
        a = a.reshape(-1, self.num_heads, self.alpha_hidden)
        if self.attention == "mlp":
            logits = (self.alpha_act(a) * self.alpha_dot).sum(-1)
        else:
            assert query is not None
            logits = (query[dst] * a).sum(-1) / math.sqrt(self.alpha_hidden)
        if self.softmax == "plain":
            alpha = plain_softmax(logits, dst, n)
        else:
            alpha = envelope_softmax(logits, envelope, dst, n)
        if self.alpha_dropout is not None:
            alpha = self.alpha_dropout(alpha)

        if self.nonlinear_message:
            if self._gate_in_cl:
                v = self._gate_cl(v)
            else:
                v = to_channels_last(self.gate(from_channels_last(v)), self.gate.irreps_out)
            if self._fused:
                v = self._linear_after_tp(self.value_dtp, v, sh, [self.value_out], None)[0]
            else:
                v = self.value_out.forward_cl(self.value_dtp.forward_cl(v, sh))
        out = []
        for k, vk in enumerate(v):
            vk = vk * alpha.index_select(1, getattr(self, f"head_of_channel_{k}")).unsqueeze(1)
            out.append(vk.new_zeros((n,) + vk.shape[1:]).index_add(0, dst, vk))
        return out
