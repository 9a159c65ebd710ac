"""Equiformer's composite blocks: embeddings, the gated feed-forward network, the transformer block."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from e3nn import o3
from torch import nn

from .activation import make_gate
from .attention import GraphAttention
from .dropout import GraphDropPath
from .edge_chunks import EdgeChunk
from .linear import IrrepsLinear
from .norm import EquivariantLayerNorm
from .radial import RadialMLP
from .tensor_product import DepthwiseTensorProduct

__all__ = ["AtomEmbedding", "EdgeDegreeEmbedding", "FeedForward", "TransformerBlock"]


class AtomEmbedding(nn.Module):
    """One-hot(element index) -> linear (with bias) to the node irreps; only 0e channels are set.
    element index (N,) -> (N, irreps_node.dim)."""

    def __init__(self, num_elements: int, irreps_node: o3.Irreps) -> None:
        super().__init__()
        self.num_elements = num_elements
        self.linear = IrrepsLinear(f"{num_elements}x0e", irreps_node, bias=True)

    def forward(self, species: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        onehot = nn.functional.one_hot(species, self.num_elements).to(dtype) * math.sqrt(self.num_elements)
        return self.linear(onehot)


class EdgeDegreeEmbedding(nn.Module):
    """A constant scalar per atom, expanded to the node irreps, tensor-multiplied with each edge's
    spherical harmonics (radial weights times the envelope), projected without bias and summed
    over incoming edges / sqrt(average degree). Each edge's term vanishes at the cutoff.
    ``proj_bias`` adds a bias to the 0e outputs of the projection (per edge, as the reference
    code does; that term does not vanish at the cutoff). -> (N, irreps_node.dim)."""

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_basis: int,
        fc_neurons: tuple[int, ...],
        avg_degree: float,
        proj_bias: bool = False,
    ) -> None:
        super().__init__()
        self.expand = IrrepsLinear("1x0e", irreps_node, bias=False)
        self.dtp = DepthwiseTensorProduct(irreps_node, irreps_sh, irreps_node)
        self.radial = RadialMLP(num_basis, fc_neurons, self.dtp.weight_numel)
        self.proj = IrrepsLinear(self.dtp.irreps_out.simplify(), irreps_node, bias=proj_bias)
        self.inv_sqrt_degree = 1.0 / math.sqrt(avg_degree)

    def forward(
        self, num_nodes: int, sh: torch.Tensor, basis: torch.Tensor, envelope: torch.Tensor, edge_index: torch.Tensor
    ) -> torch.Tensor:
        """Same numbers as :meth:`forward_reference`, computed with the fused tensor product +
        projection (:meth:`DepthwiseTensorProduct.forward_linear_cl`): the edge features never hold
        the full tensor-product output, and the blocks of the constant node features that are
        exactly zero (l > 0: no path, no bias) are skipped."""
        emb = self
        proj, expand = emb.proj, emb.expand
        if proj.irreps_in != emb.dtp.irreps_out_simple or len({ir for _, ir in proj.irreps_in}) != len(proj.irreps_in):
            return self.forward_reference(num_nodes, sh, basis, envelope, edge_index)
        ones = torch.ones(1, 1, dtype=sh.dtype, device=sh.device)
        node = expand.forward_cl([ones.view(1, 1, 1)])
        fed = {path.i_out for path in expand.paths}
        node = [y if (j in fed or expand.has_bias[j]) else None for j, y in enumerate(node)]
        mats: list[torch.Tensor | None] = [None] * len(proj.irreps_in)
        for path, w in proj.path_weights():
            mats[path.i_in] = w  # one path per input block (unique irreps)
        weight = emb.radial(basis) * envelope.unsqueeze(-1)
        ys = emb.dtp.forward_linear_cl(node, sh, mats, weight)
        n_edges = sh.shape[0]
        outs = []
        for j, (mul, ir) in enumerate(proj.irreps_out):
            src = [path.i_in for path in proj.paths if path.i_out == j]
            y = ys[src[0]] if src and ys[src[0]] is not None else sh.new_zeros(n_edges, ir.dim, mul)
            bias = proj.output_bias(j)
            if bias is not None:
                y = y + bias
            outs.append(y.new_zeros((num_nodes,) + y.shape[1:]).index_add(0, edge_index[1], y))
        out = torch.cat([o.transpose(1, 2).reshape(num_nodes, -1) for o in outs], dim=-1)
        return out * emb.inv_sqrt_degree

    def forward_reference(
        self, num_nodes: int, sh: torch.Tensor, basis: torch.Tensor, envelope: torch.Tensor, edge_index: torch.Tensor
    ) -> torch.Tensor:
        """The plain, readable computation (kept as the oracle of :meth:`forward`)."""
        ones = torch.ones(1, 1, dtype=sh.dtype, device=sh.device)
        node = self.expand(ones).expand(sh.shape[0], -1)
        weight = self.radial(basis) * envelope.unsqueeze(-1)
        edge = self.proj(self.dtp(node, sh, weight))
        out = torch.zeros(num_nodes, edge.shape[1], dtype=edge.dtype, device=edge.device)
        return out.index_add(0, edge_index[1], edge) * self.inv_sqrt_degree


class FeedForward(nn.Module):
    """Linear -> gate (SiLU on scalars, sigmoid gates on l>0) -> linear. (N, in) -> (N, out)."""

    def __init__(self, irreps_in: o3.Irreps, irreps_hidden: o3.Irreps, irreps_out: o3.Irreps) -> None:
        super().__init__()
        self.gate = make_gate(irreps_hidden)
        self.linear1 = IrrepsLinear(irreps_in, self.gate.irreps_in, bias=True)
        self.linear2 = IrrepsLinear(self.gate.irreps_out, irreps_out, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.gate(self.linear1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm Equiformer block:
        x1  = x  + DropPath(GraphAttention(LN1(x)))
        out = shortcut(x1) + DropPath(FFN(LN2(x1)))
    where ``shortcut`` is the identity, or a linear map when ``irreps_out`` differs from the node irreps."""

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_head: o3.Irreps,
        num_heads: int,
        irreps_mlp: o3.Irreps,
        num_basis: int,
        fc_neurons: tuple[int, ...],
        attention: str = "mlp",
        nonlinear_message: bool = True,
        alpha_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm: str = "smooth",
        softmax: str = "envelope",
    ) -> None:
        super().__init__()
        self.norm1 = EquivariantLayerNorm(irreps_node, mode=norm)
        self.attn = GraphAttention(
            irreps_node, irreps_sh, irreps_node, irreps_head, num_heads, num_basis, fc_neurons,
            attention=attention, nonlinear_message=nonlinear_message, alpha_drop=alpha_drop, proj_drop=proj_drop,
            softmax=softmax,
        )
        self.norm2 = EquivariantLayerNorm(irreps_node, mode=norm)
        self.ffn = FeedForward(irreps_node, irreps_mlp, irreps_out)
        self.shortcut = None if o3.Irreps(irreps_out) == o3.Irreps(irreps_node) else IrrepsLinear(irreps_node, irreps_out)
        self.drop_path = GraphDropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        basis: torch.Tensor,
        envelope: torch.Tensor,
        edge_index: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
        chunks: Sequence[EdgeChunk] | None = None,
    ) -> torch.Tensor:
        """``chunks``: low-memory mode, the attention's per-edge work chunk by chunk (see
        ``edge_chunks.py``)."""
        x = x + self.drop_path(self.attn(self.norm1(x), sh, basis, envelope, edge_index, chunks), batch, num_graphs)
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + self.drop_path(self.ffn(self.norm2(x)), batch, num_graphs)
