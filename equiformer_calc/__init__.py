"""equiformer-calc: the Equiformer equivariant graph-attention Transformer as an ASE calculator."""

__version__ = "0.1.0"
