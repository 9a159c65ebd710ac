"""Building blocks of Equiformer (torch + e3nn only; nothing here knows of ASE or of graphs' origin)."""

from .activation import SmoothLeakyReLU, make_gate
from .attention import GraphAttention, envelope_softmax
from .blocks import AtomEmbedding, EdgeDegreeEmbedding, FeedForward, TransformerBlock
from .dropout import GraphDropPath
from .edge_chunks import EdgeChunk, checkpointed_sum, sort_by_destination, split_edges
from .irreps import sh_irreps, with_parity
from .linear import IrrepsLinear
from .norm import EquivariantLayerNorm
from .radial import BesselBasis, ExpNormalBasis, GaussianBasis, PolynomialEnvelope, RadialMLP, make_radial_basis
from .repulsion import ZBLRepulsion
from .tensor_product import DepthwiseTensorProduct, reference_tensor_product

__all__ = [
    "AtomEmbedding", "BesselBasis", "DepthwiseTensorProduct", "EdgeChunk", "EdgeDegreeEmbedding", "EquivariantLayerNorm",
    "ExpNormalBasis", "FeedForward", "GaussianBasis", "GraphAttention", "GraphDropPath", "IrrepsLinear",
    "PolynomialEnvelope", "RadialMLP", "SmoothLeakyReLU", "TransformerBlock", "envelope_softmax",
    "ZBLRepulsion", "checkpointed_sum", "make_gate", "make_radial_basis", "reference_tensor_product", "sh_irreps",
    "sort_by_destination", "split_edges", "with_parity",
]
