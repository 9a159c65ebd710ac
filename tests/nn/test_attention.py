"""``nn.attention``: the graph attention is equivariant (e3nn's ``assert_equivariant`` over rotations
and reflections of its inputs) and invariant to relabelling the atoms; its weights are a
sub-normalised distribution over each atom's neighbours (sum < 1, the rest on the null neighbour)
that vanishes as a neighbour reaches the cutoff, so an edge at the cutoff changes nothing; the
reference code's plain softmax sums to 1."""

from __future__ import annotations

import pytest
import torch
from e3nn.util.test import assert_equivariant

from equiformer_calc.nn import GraphAttention
from equiformer_calc.nn.attention import envelope_softmax, plain_softmax

from ._graphs import CUTOFF, IRREPS_HEAD, IRREPS_NODE, IRREPS_SH, NUM_BASIS, cloud, edge_features

pytestmark = pytest.mark.usefixtures("float64_default")


def attention(kind: str = "mlp", nonlinear: bool = True, softmax: str = "envelope") -> GraphAttention:
    torch.manual_seed(0)
    return GraphAttention(IRREPS_NODE, IRREPS_SH, IRREPS_NODE, IRREPS_HEAD, 2, NUM_BASIS, (16,), attention=kind,
                          nonlinear_message=nonlinear, softmax=softmax).double().eval()


@pytest.mark.parametrize("kind, nonlinear", [("mlp", True), ("dot", False)])
def test_attention_is_equivariant_under_rotations_and_reflections(kind, nonlinear):
    att, g = attention(kind, nonlinear), cloud()

    def f(x, sh):
        return att(x, sh, g["basis"], g["envelope"], g["edge_index"])

    errors = assert_equivariant(f, [g["x"], g["sh"]], irreps_in=[IRREPS_NODE, IRREPS_SH], irreps_out=[IRREPS_NODE],
                                tolerance=1e-9)
    assert max(float(e.max()) for e in errors.values()) < 1e-9


def test_relabelling_the_atoms_relabels_the_output():
    att, g = attention(), cloud()
    out = att(g["x"], g["sh"], g["basis"], g["envelope"], g["edge_index"])
    perm = torch.randperm(g["x"].shape[0], generator=torch.Generator().manual_seed(1))
    inverse = torch.argsort(perm)  # new atom k is old atom perm[k]
    edges = inverse[g["edge_index"]]
    moved = att(g["x"][perm], g["sh"], g["basis"], g["envelope"], edges)
    torch.testing.assert_close(moved, out[perm], rtol=0, atol=1e-12)


def test_weights_are_sub_normalised_and_vanish_at_the_cutoff():
    g = cloud()
    dst, n = g["edge_index"][1], g["x"].shape[0]
    logits = torch.randn(dst.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    alpha = envelope_softmax(logits, g["envelope"], dst, n)
    total = torch.zeros(n, 2, dtype=torch.float64).index_add(0, dst, alpha)
    assert (alpha >= 0).all() and (total < 1).all()
    # the weight of an edge follows its envelope down to exactly 0 at the cutoff
    at_cutoff = g["envelope"].clone()
    at_cutoff[0] = 0.0
    assert envelope_softmax(logits, at_cutoff, dst, n)[0].abs().max() == 0.0
    # the plain softmax of the reference code is a full distribution over the neighbours
    plain_total = torch.zeros(n, 2, dtype=torch.float64).index_add(0, dst, plain_softmax(logits, dst, n))
    has_edges = torch.bincount(dst, minlength=n) > 0
    torch.testing.assert_close(plain_total[has_edges], torch.ones_like(plain_total[has_edges]))


def test_a_neighbour_at_the_cutoff_changes_nothing():
    """Moving an atom's only partner out to the cutoff: the output with that edge at r = cutoff equals
    the output without the edge (the softmax's null neighbour takes its weight), so the attention is
    continuous as neighbours leave. With the reference code's plain softmax it is not."""
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.3, -0.4], [0.5, 1.0, 0.2], [0.0, 0.0, CUTOFF]], dtype=torch.float64)
    x = torch.randn(4, IRREPS_NODE.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    full = torch.tensor([[1, 2, 0, 2, 0, 1, 3, 0], [0, 0, 1, 1, 2, 2, 0, 3]])  # 0-3 at exactly the cutoff
    inner = full[:, :6]
    for softmax, continuous in (("envelope", True), ("plain", False)):
        att = attention(softmax=softmax)
        with_edge = att(x, **_edges(pos, full))
        without = att(x, **_edges(pos, inner))
        same = torch.allclose(with_edge, without, rtol=0, atol=1e-12)
        assert same == continuous, softmax


def _edges(pos: torch.Tensor, edge_index: torch.Tensor) -> dict[str, torch.Tensor]:
    feats = edge_features(pos, edge_index)
    return dict(sh=feats["sh"], basis=feats["basis"], envelope=feats["envelope"], edge_index=edge_index)
