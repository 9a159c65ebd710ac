"""Building blocks: equivariance of the norm and gate, the envelope, the cutoff-smooth softmax."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from equiformer_calc.nn import EquivariantLayerNorm, PolynomialEnvelope, envelope_softmax, make_gate, with_parity


@pytest.mark.parametrize("mode", ["smooth", "block"])
def test_layer_norm_equivariant(mode):
    irreps = with_parity("8x0e+4x1e+2x2e", True)
    norm = EquivariantLayerNorm(irreps, mode=mode).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(6, irreps.dim, dtype=torch.float64)
    rot = o3.rand_matrix(dtype=torch.float64)
    D = irreps.D_from_matrix(-rot)  # rotation times inversion: parity matters
    torch.testing.assert_close(norm(x @ D.T), norm(x) @ D.T)


def test_smooth_norm_keeps_vanishing_vectors_small():
    """At a symmetric site the l>0 block is ~0: the paper's per-block norm blows it up to O(1),
    the smooth norm keeps it small (and so differentiable)."""
    irreps = o3.Irreps("4x0e+2x1o")
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, irreps.dim, dtype=torch.float64)
    x[:, :4] = torch.tensor([1.0, -0.5, 0.3, -0.8], dtype=torch.float64)  # O(1) scalars
    x[:, 4:] = 1e-2 * torch.randn(1, 6, generator=g, dtype=torch.float64)  # vectors ~0 by symmetry
    block = EquivariantLayerNorm(irreps, mode="block").double()(x)
    smooth = EquivariantLayerNorm(irreps, mode="smooth").double()(x)
    assert block[:, 4:].abs().max() > 0.5
    assert smooth[:, 4:].abs().max() < 0.05


def test_gate_equivariant():
    irreps = with_parity("4x0e+2x1e+2x2e", True)
    gate = make_gate(irreps).double()
    x = torch.randn(5, gate.irreps_in.dim, dtype=torch.float64)
    rot = o3.rand_matrix(dtype=torch.float64)
    torch.testing.assert_close(
        gate(x @ gate.irreps_in.D_from_matrix(rot).T), gate(x) @ gate.irreps_out.D_from_matrix(rot).T
    )


def test_envelope_smooth_at_cutoff():
    env = PolynomialEnvelope(5.0, p=5)
    r = torch.tensor([0.0, 2.5, 5.0 - 1e-4, 5.0, 6.0], dtype=torch.float64, requires_grad=True)
    c = env(r)
    (g,) = torch.autograd.grad(c.sum(), r, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), r)
    assert c[0] == 1.0 and c[3] == 0.0 and c[4] == 0.0
    assert abs(c[2]) < 1e-10 and abs(g[2]) < 1e-6 and abs(h[2]) < 1e-2


def test_envelope_softmax():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5], [10.0, 3.0], [0.0, 0.0]], dtype=torch.float64)
    dst = torch.tensor([0, 0, 1, 1])
    env = torch.tensor([1.0, 0.5, 1.0, 1e-12], dtype=torch.float64)
    alpha = envelope_softmax(logits, env, dst, num_nodes=3)
    # explicit formula c e^a / (1 + sum c e^a)
    e = env[:, None] * logits.exp()
    den = torch.stack([1 + e[:2].sum(0), 1 + e[2:].sum(0)])
    torch.testing.assert_close(alpha, e / den[dst])
    # an edge at the cutoff (c -> 0) carries no weight; the sum over a node stays below 1
    assert alpha[3].abs().max() < 1e-11
    assert (alpha[:2].sum(0) < 1).all()
    # large logits do not overflow
    big = envelope_softmax(logits * 100, env, dst, num_nodes=3)
    assert torch.isfinite(big).all()


def test_edge_degree_embedding_fused_equals_reference():
    from equiformer_calc.nn import EdgeDegreeEmbedding, sh_irreps

    torch.manual_seed(0)
    irreps = with_parity("8x0e+4x1e+2x2e", True)
    sh_ir = sh_irreps(2, True)
    emb = EdgeDegreeEmbedding(irreps, sh_ir, 8, (16,), 10.0).double()
    vec = torch.randn(30, 3, dtype=torch.float64)
    sh = o3.spherical_harmonics(sh_ir, vec, True, "component")
    basis = torch.randn(30, 8, dtype=torch.float64)
    env = torch.rand(30, dtype=torch.float64)
    edge_index = torch.randint(0, 7, (2, 30))
    torch.testing.assert_close(emb(7, sh, basis, env, edge_index), emb.forward_reference(7, sh, basis, env, edge_index))
