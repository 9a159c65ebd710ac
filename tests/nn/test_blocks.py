"""``nn.blocks``: the transformer block is equivariant (e3nn's ``assert_equivariant``), an atom whose
neighbours all sit at the cutoff is updated by its own features only (attention + FFN act as a
per-atom map), and the atom embedding gives every atom of one element the same invariant features."""

from __future__ import annotations

import pytest
import torch
from e3nn.util.test import assert_equivariant

from equiformer_calc.nn import AtomEmbedding, TransformerBlock, with_parity

from ._graphs import CUTOFF, IRREPS_HEAD, IRREPS_NODE, IRREPS_SH, NUM_BASIS, cloud, edge_features

pytestmark = pytest.mark.usefixtures("float64_default")


def block(irreps_out=IRREPS_NODE) -> TransformerBlock:
    torch.manual_seed(0)
    return TransformerBlock(IRREPS_NODE, IRREPS_SH, irreps_out, IRREPS_HEAD, 2, with_parity("16x0e+8x1e+4x2e", True),
                            NUM_BASIS, (16,)).double().eval()


def test_block_is_equivariant_with_and_without_a_shortcut_projection():
    g = cloud()
    batch = torch.zeros(g["x"].shape[0], dtype=torch.long)
    for irreps_out in (IRREPS_NODE, with_parity("6x0e+2x1e", True)):
        blk = block(irreps_out)

        def f(x, sh):
            return blk(x, sh, g["basis"], g["envelope"], g["edge_index"], batch, 1)

        errors = assert_equivariant(f, [g["x"], g["sh"]], irreps_in=[IRREPS_NODE, IRREPS_SH], irreps_out=[irreps_out],
                                    tolerance=1e-9)
        assert max(float(e.max()) for e in errors.values()) < 1e-9


def test_an_atom_whose_neighbours_are_at_the_cutoff_is_updated_alone():
    """Atom 0 with its two neighbours at exactly the cutoff: its output does not depend on their
    features, and equals its output in a graph without those edges."""
    blk = block()
    pos = torch.tensor([[0.0, 0.0, 0.0], [CUTOFF, 0.0, 0.0], [0.0, CUTOFF, 0.0]], dtype=torch.float64)
    edge_index = torch.tensor([[1, 2, 0, 0], [0, 0, 1, 2]])
    feats = edge_features(pos, edge_index)
    assert float(feats["envelope"].abs().max()) == 0.0
    batch = torch.zeros(3, dtype=torch.long)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, IRREPS_NODE.dim, dtype=torch.float64, generator=gen)
    out = blk(x, feats["sh"], feats["basis"], feats["envelope"], edge_index, batch, 1)
    other = x.clone()
    other[1:] = torch.randn(2, IRREPS_NODE.dim, dtype=torch.float64, generator=gen)
    out_other = blk(other, feats["sh"], feats["basis"], feats["envelope"], edge_index, batch, 1)
    torch.testing.assert_close(out_other[0], out[0], rtol=0, atol=1e-12)
    empty = torch.zeros(2, 0, dtype=torch.long)
    alone = blk(x, feats["sh"][:0], feats["basis"][:0], feats["envelope"][:0], empty, batch, 1)
    torch.testing.assert_close(alone, out, rtol=0, atol=1e-12)


def test_embedding_depends_on_the_element_only_and_fills_scalars():
    emb = AtomEmbedding(3, IRREPS_NODE).double()
    out = emb(torch.tensor([0, 2, 0, 1]), torch.float64)
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=0)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[3])
    scalars = sum(mul for mul, ir in IRREPS_NODE if ir.l == 0)
    assert out[:, scalars:].abs().max() == 0.0  # no vector or tensor features before the first message
