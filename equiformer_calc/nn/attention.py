"""Equivariant graph attention (Equiformer's contribution), with a cutoff-smooth softmax."""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from .activation import SmoothLeakyReLU, make_gate
from .linear import IrrepsLinear
from .radial import RadialMLP
from .tensor_product import DepthwiseTensorProduct

__all__ = ["GraphAttention", "envelope_softmax"]


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


class GraphAttention(nn.Module):
    """Multi-head equivariant graph attention over a radius graph.

    1. m_ij = Linear_src(x_j) + Linear_dst(x_i);  h_ij = DTP(m_ij, Y(r_ij); w(r_ij) c(r_ij)).
    2. Logits: MLP attention (linear -> smooth leaky ReLU -> dot with a per-head vector) or
       dot-product attention (query of x_i . key of h_ij / sqrt(d)).
    3. Values: non-linear (linear -> gate -> second DTP with shared weights -> linear) or linear.
    4. out_i = Linear(sum_j alpha_ij v_ij), alpha from :func:`envelope_softmax`.

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
    ) -> None:
        super().__init__()
        if attention not in ("mlp", "dot"):
            raise ValueError(f"attention must be 'mlp' or 'dot', got {attention!r}")
        self.attention = attention
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

    def forward(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        basis: torch.Tensor,
        envelope: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> torch.Tensor:
        src, dst = edge_index[0], edge_index[1]
        n = x.shape[0]
        message = self.merge_src(x)[src] + self.merge_dst(x)[dst]
        weight = self.radial(basis) * envelope.unsqueeze(-1)
        h = self.dtp(message, sh, weight)

        a = self.alpha_linear(h).view(-1, self.num_heads, self.alpha_hidden)
        if self.attention == "mlp":
            logits = (self.alpha_act(a) * self.alpha_dot).sum(-1)
        else:
            q = self.query(x).view(-1, self.num_heads, self.alpha_hidden)[dst]
            logits = (q * a).sum(-1) / math.sqrt(self.alpha_hidden)
        alpha = envelope_softmax(logits, envelope, dst, n)
        if self.alpha_dropout is not None:
            alpha = self.alpha_dropout(alpha)

        if self.nonlinear_message:
            v = self.gate(self.value_linear(h))
            v = self.value_out(self.value_dtp(v, sh))
        else:
            v = self.value_out(h)
        v = v * alpha[:, self.head_of_col]
        out = torch.zeros(n, v.shape[1], dtype=v.dtype, device=v.device).index_add(0, dst, v)
        out = self.proj(out)
        if self.proj_dropout is not None:
            out = self.proj_dropout(out)
        return out
