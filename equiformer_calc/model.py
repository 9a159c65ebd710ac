"""The Equiformer network: embeddings -> transformer blocks -> per-atom energy readout.

The model takes tensors only (species, positions, edge index, integer cell shifts, cells, batch
vector) and handles many graphs at once; it knows nothing of ASE. Forces and stress are obtained
by the caller (``predictor.py``) with autograd through the edge vectors computed here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from ase.data import atomic_numbers, chemical_symbols, covalent_radii
from e3nn import o3
from torch import nn

from .graph import edge_vectors
from .nn import (
    AtomEmbedding,
    EdgeDegreeEmbedding,
    EquivariantLayerNorm,
    IrrepsLinear,
    PolynomialEnvelope,
    TransformerBlock,
    ZBLRepulsion,
    checkpointed_sum,
    make_radial_basis,
    sh_irreps,
    sort_by_destination,
    split_edges,
    with_parity,
)

__all__ = [
    "EquiformerConfig", "Equiformer", "PRESETS", "UnknownElementError", "CheckpointInfo", "NotAPotentialError",
    "model_task", "not_a_potential_message", "resolve_dtype",
]


class UnknownElementError(ValueError):
    """A structure contains an element the model was not built for."""


class NotAPotentialError(ValueError):
    """Forces or stress were asked of a model whose energy is not a potential energy surface."""


def model_task(model: Equiformer) -> str:
    """What the model's energy is: ``"potential"`` (the default), ``"is2re-direct"`` (OC20's
    relaxed adsorption energy predicted from an initial structure) or ``"property"`` (a
    molecular property); from the checkpoint metadata's ``task``."""
    return str(model.metadata.get("task", "potential"))


def not_a_potential_message(task: str, prop: str) -> str:
    """Why ``prop`` (forces / stress) is refused for a model of ``task``."""
    if task == "is2re-direct":
        return (
            f"{prop} are not available: this is a direct IS2RE model. It predicts the relaxed adsorption energy "
            "of the structure an initial (unrelaxed) geometry would relax to, not the energy of the geometry "
            "itself, so its derivative is not a force. Use its energy for screening (screen --direct), and a "
            "potential for relaxations and MD."
        )
    return (
        f"{prop} are not available: this model predicts a molecular property (task {task!r}), not a potential "
        "energy; convert it with task='potential' if its target is an energy"
    )


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' / 'float64' (or a torch dtype) -> torch dtype; anything else is an error."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.float64):
            return dtype
    elif dtype in ("float32", "float64"):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a model's weights come from: set by
    :func:`~equiformer_calc.checkpoint.load_checkpoint` (and by the reference converter for an
    in-memory model) as :attr:`Equiformer.checkpoint`; read by the calculators (their
    ``parameters`` record ``name`` and ``sha256``), the service and the screening database.

    ``name`` is the checkpoint's short name (the file's stem, e.g. ``"emt-small"``), ``path`` the
    file it was read from and ``sha256`` that file's digest (both ``None`` for a model that was
    never written), ``metadata`` the checkpoint's JSON metadata (architecture config, units,
    task, training provenance, metrics).
    """

    name: str | None = None
    path: str | None = None
    sha256: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class EquiformerConfig:
    """Architecture of an :class:`Equiformer`. Irreps are written with even labels ('1e'); with
    ``parity=True`` (E(3), the default) odd l are relabelled 'o' so energies are mirror-invariant.

    elements: chemical symbols the model accepts (order defines the embedding rows).

    Options that reproduce the reference Equiformer code (used by ``equiformer_calc.reference`` to
    convert its checkpoints; the defaults are this project's cutoff-smooth model):

    - ``radial_basis``: also ``"gaussian-reference"``, ``"exp-reference"``, ``"bessel-reference"``
      (see ``nn/radial.py``).
    - ``radial_envelope=False``: radial weights are not multiplied by the polynomial envelope.
    - ``softmax="plain"``: attention softmax without the envelope and the null neighbour.
    - ``norm="block"``: the paper's per-block layer norm; ``parity=False``: SE(3) irreps.
    - ``edge_embedding_bias=True``: the edge-degree embedding's projection has 0e biases.
    - ``num_tags``: > 0 adds an embedding of per-atom integer tags 0..num_tags-1 (OC20: 0
      subsurface, 1 surface, 2 adsorbate); the model then needs ``tags`` in :meth:`Equiformer.forward`.
    - ``energy_offset``: a constant added once to every structure's energy (the reference's
      de-normalisation mean); per-atom energies carry offset / N each.
    - ``irreps_feature`` may hold l > 0 irreps (only its scalars reach the readout).
    pair_repulsion: ``"zbl"`` adds the switched ZBL screened-Coulomb repulsion
    (:class:`~equiformer_calc.nn.ZBLRepulsion`) to the learned energy, acting below
    ``pair_repulsion_cutoff`` x the sum of the two atoms' covalent radii; ``None`` adds nothing.
    New models have it on; configs saved before it existed (no ``pair_repulsion`` key, e.g. the
    emt-small checkpoint) read as ``None`` and give exactly their old numbers.
    """

    elements: list[str]
    cutoff: float = 5.0
    num_blocks: int = 6
    irreps_node: str = "128x0e+64x1e+32x2e"
    lmax: int = 2
    num_heads: int = 4
    irreps_head: str = "32x0e+16x1e+8x2e"
    irreps_mlp: str = "384x0e+192x1e+96x2e"
    irreps_feature: str = "512x0e"
    radial_basis: str = "bessel"
    num_basis: int = 8
    fc_neurons: tuple[int, ...] = (64, 64)
    envelope_p: int = 5
    attention: str = "mlp"
    nonlinear_message: bool = True
    parity: bool = True
    alpha_drop: float = 0.0
    proj_drop: float = 0.0
    drop_path: float = 0.0
    avg_degree: float = 30.0
    norm: str = "smooth"
    softmax: str = "envelope"
    radial_envelope: bool = True
    edge_embedding_bias: bool = False
    num_tags: int = 0
    energy_offset: float = 0.0
    pair_repulsion: str | None = "zbl"
    pair_repulsion_cutoff: float = 0.75

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fc_neurons"] = list(self.fc_neurons)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EquiformerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown Equiformer config keys: {sorted(unknown)}")
        d = dict(d)
        # configs written before the pair term existed describe models without it
        d.setdefault("pair_repulsion", None)
        if "fc_neurons" in d:
            d["fc_neurons"] = tuple(d["fc_neurons"])
        return cls(**d)


#: The published settings of the reference code (layer sizes); ``parity=False`` reproduces its
#: SE(3) irreps and parameter counts.
PRESETS: dict[str, dict[str, Any]] = {
    "md17-l2": dict(
        norm="block", num_blocks=6, irreps_node="128x0e+64x1e+32x2e", lmax=2, num_heads=4, irreps_head="32x0e+16x1e+8x2e",
        irreps_mlp="384x0e+192x1e+96x2e", irreps_feature="512x0e", radial_basis="exp", num_basis=32,
    ),
    "md17-l3": dict(
        norm="block", num_blocks=6, irreps_node="128x0e+64x1e+64x2e+32x3e", lmax=3, num_heads=4,
        irreps_head="32x0e+16x1e+16x2e+8x3e", irreps_mlp="384x0e+192x1e+192x2e+96x3e", irreps_feature="512x0e",
        radial_basis="exp", num_basis=32,
    ),
    "qm9": dict(
        norm="block", num_blocks=6, irreps_node="128x0e+64x1e+32x2e", lmax=2, num_heads=4, irreps_head="32x0e+16x1e+8x2e",
        irreps_mlp="384x0e+192x1e+96x2e", irreps_feature="512x0e", radial_basis="gaussian", num_basis=128,
        alpha_drop=0.2, drop_path=0.0,
    ),
    "oc20-is2re": dict(
        norm="block", num_blocks=6, irreps_node="256x0e+128x1e", lmax=1, num_heads=8, irreps_head="32x0e+16x1e",
        irreps_mlp="768x0e+384x1e", irreps_feature="512x0e", radial_basis="gaussian", num_basis=128,
        alpha_drop=0.2, drop_path=0.05,
    ),
    # the size trained for the shipped checkpoint: small enough to train and run on 2 CPU cores
    "small": dict(
        num_blocks=3, irreps_node="32x0e+16x1e+8x2e", lmax=2, num_heads=2, irreps_head="16x0e+8x1e+4x2e",
        irreps_mlp="64x0e+32x1e+16x2e", irreps_feature="64x0e", radial_basis="bessel", num_basis=8,
        fc_neurons=(32, 32),
    ),
    # tests: a couple of thousand parameters
    "tiny": dict(
        num_blocks=2, irreps_node="8x0e+4x1e+2x2e", lmax=2, num_heads=2, irreps_head="4x0e+2x1e+2x2e",
        irreps_mlp="16x0e+4x1e+2x2e", irreps_feature="8x0e", radial_basis="bessel", num_basis=8,
        fc_neurons=(16,), avg_degree=10.0,
    ),
}


class Equiformer(nn.Module):
    """Equivariant graph-attention Transformer predicting total and per-atom energies.

    ``Equiformer(elements=[...], cutoff=5.0, **config)`` or ``Equiformer.from_preset(name, elements=...)``.
    Per-atom energy E_i = scale * f(x_i) + shift + E_ref[Z_i] (scale, shift and the per-element
    reference energies are buffers fitted from data and saved with the weights); totals are
    accumulated in float64.

    ``checkpoint`` is the :class:`CheckpointInfo` of a model loaded from a checkpoint (``None`` for
    a model built in memory); ``metadata`` its metadata (empty without one).
    """

    #: where the weights come from (None: built in memory); see :class:`CheckpointInfo`
    checkpoint: CheckpointInfo | None

    def __init__(self, elements: Sequence[str] | None = None, cutoff: float = 5.0, config: EquiformerConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            if elements is None:
                raise ValueError("Equiformer needs the list of elements it should accept")
            config = EquiformerConfig(elements=list(elements), cutoff=cutoff, **kwargs)
        elif kwargs or elements is not None:
            raise ValueError("pass either a config or elements/cutoff/keywords, not both")
        for symbol in config.elements:
            if symbol not in atomic_numbers:
                raise ValueError(f"unknown chemical symbol {symbol!r} in elements")
        if len(set(config.elements)) != len(config.elements):
            raise ValueError("elements contains duplicates")
        self.config = config
        self.checkpoint = None
        e3 = config.parity
        irreps_node = with_parity(config.irreps_node, e3)
        irreps_sh = sh_irreps(config.lmax, e3)
        irreps_head = with_parity(config.irreps_head, e3)
        irreps_mlp = with_parity(config.irreps_mlp, e3)
        irreps_feature = with_parity(config.irreps_feature, e3)
        feature_scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_feature if ir.l == 0 and ir.p == 1])
        if feature_scalars.num_irreps == 0:
            raise ValueError("irreps_feature must contain scalars (0e) for the energy readout")
        if config.num_tags < 0:
            raise ValueError(f"num_tags must be >= 0, got {config.num_tags}")
        self.irreps_node, self.irreps_sh = irreps_node, irreps_sh

        z_to_index = torch.full((119,), -1, dtype=torch.long)
        for k, symbol in enumerate(config.elements):
            z_to_index[atomic_numbers[symbol]] = k
        self.register_buffer("z_to_index", z_to_index, persistent=False)
        n_el = len(config.elements)

        self.atom_embedding = AtomEmbedding(n_el, irreps_node)
        if config.num_tags:
            self.tag_embedding = AtomEmbedding(config.num_tags, irreps_node)
        self.basis = make_radial_basis(config.radial_basis, config.cutoff, config.num_basis, config.envelope_p)
        self.envelope = PolynomialEnvelope(config.cutoff, config.envelope_p)
        fc = tuple(config.fc_neurons)
        self.edge_embedding = EdgeDegreeEmbedding(
            irreps_node, irreps_sh, config.num_basis, fc, config.avg_degree, proj_bias=config.edge_embedding_bias
        )
        drop = [config.drop_path * k / max(config.num_blocks - 1, 1) for k in range(config.num_blocks)]
        self.blocks = nn.ModuleList(
            TransformerBlock(
                irreps_node, irreps_sh, irreps_feature if k == config.num_blocks - 1 else irreps_node,
                irreps_head, config.num_heads, irreps_mlp, config.num_basis, fc,
                attention=config.attention, nonlinear_message=config.nonlinear_message,
                alpha_drop=config.alpha_drop, proj_drop=config.proj_drop, drop_path=drop[k], norm=config.norm,
                softmax=config.softmax,
            )
            for k in range(config.num_blocks)
        )
        self.norm = EquivariantLayerNorm(irreps_feature, mode=config.norm)
        self.head = nn.Sequential(
            IrrepsLinear(irreps_feature, feature_scalars), nn.SiLU(), IrrepsLinear(feature_scalars, "1x0e")
        )
        # energy de-normalisation, in float64 so that large reference energies keep precision
        self.register_buffer("atomic_energies", torch.zeros(n_el, dtype=torch.float64))
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("shift", torch.zeros((), dtype=torch.float64))
        if config.pair_repulsion not in (None, "zbl"):
            raise ValueError(f"pair_repulsion must be 'zbl' or None, got {config.pair_repulsion!r}")
        self.pair: ZBLRepulsion | None = None
        if config.pair_repulsion == "zbl":
            numbers = [atomic_numbers[s] for s in config.elements]
            self.pair = ZBLRepulsion(numbers, [float(covalent_radii[z]) for z in numbers], config.pair_repulsion_cutoff)

    _FLOAT64_BUFFERS = ("atomic_energies", "scale", "shift")

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        # the energy de-normalisation stays float64 whatever dtype the network is cast to
        saved = {name: self._buffers[name] for name in self._FLOAT64_BUFFERS}
        super()._apply(fn, *args, **kwargs)
        for name, value in saved.items():
            self._buffers[name] = value.to(device=self._buffers[name].device, dtype=torch.float64)
        return self

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_preset(cls, name: str, elements: Sequence[str], **overrides: Any) -> "Equiformer":
        """A model with the layer sizes of a published setting ('md17-l2', 'md17-l3', 'qm9',
        'oc20-is2re') or of our own ('small', 'tiny'); keywords override any config field."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        settings = {**PRESETS[name], **overrides}
        return cls(config=EquiformerConfig(elements=list(elements), **settings))

    @classmethod
    def from_config(cls, config: EquiformerConfig | dict[str, Any]) -> "Equiformer":
        if isinstance(config, dict):
            config = EquiformerConfig.from_dict(config)
        return cls(config=config)

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The checkpoint metadata (``checkpoint.metadata``; empty for a model built in memory)."""
        return {} if self.checkpoint is None else self.checkpoint.metadata

    @property
    def elements(self) -> list[str]:
        return list(self.config.elements)

    @property
    def atomic_numbers(self) -> list[int]:
        return [atomic_numbers[s] for s in self.config.elements]

    @property
    def cutoff(self) -> float:
        return float(self.config.cutoff)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers (N,) -> embedding rows (N,); raises :class:`UnknownElementError`."""
        if numbers.numel() and (numbers.min() < 0 or numbers.max() > 118):
            raise UnknownElementError("atomic numbers must lie in 1..118")
        species = self.z_to_index[numbers]
        if bool((species < 0).any()):
            bad = sorted({chemical_symbols[int(z)] for z in numbers[species < 0].tolist()})
            raise UnknownElementError(
                f"element(s) {', '.join(bad)} not supported by this model; it supports {', '.join(self.elements)}"
            )
        return species

    def tag_index(self, tags: torch.Tensor | None, num_atoms: int) -> torch.Tensor:
        """Per-atom tags (N,) -> embedding rows, for a model with ``num_tags > 0``; a clear
        ValueError when they are missing or out of range."""
        k = self.config.num_tags
        if tags is None:
            raise ValueError(
                f"this model embeds per-atom tags (0..{k - 1}; OC20: 0 subsurface, 1 surface, 2 adsorbate) "
                "and none were given: set them with atoms.set_tags(...)"
            )
        if tags.shape != (num_atoms,):
            raise ValueError(f"tags must have shape ({num_atoms},), got {tuple(tags.shape)}")
        tags = tags.long()
        if num_atoms and (int(tags.min()) < 0 or int(tags.max()) >= k):
            bad = sorted(set(t for t in tags.tolist() if not 0 <= t < k))
            raise ValueError(
                f"tags {bad} out of range: this model knows tags 0..{k - 1} "
                "(OC20: 0 subsurface, 1 surface, 2 adsorbate)"
            )
        return tags

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        numbers: torch.Tensor | Any,
        positions: torch.Tensor | None = None,
        edge_index: torch.Tensor | None = None,
        shifts: torch.Tensor | None = None,
        cell: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
        num_graphs: int | None = None,
        tags: torch.Tensor | None = None,
        edge_chunk: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energies of a batch of graphs.

        numbers (N,) atomic numbers; positions (N, 3); edge_index (2, E) rows [src j, dst i];
        shifts (E, 3) integer cell shifts (float); cell (B, 3, 3); batch (N,) graph of each atom;
        tags (N,) integer tags, needed (and only read) when ``config.num_tags > 0``.
        Or ``model(pyg_batch)``: one PyTorch Geometric ``Data`` / ``Batch`` (see
        :func:`~equiformer_calc.integrations.pyg.from_pyg`), already in the model's dtype.
        ``edge_chunk`` (low-memory mode): run the per-edge work in chunks of at most this many
        edges under activation checkpointing (``nn/edge_chunks.py``): a fraction of the memory for
        a second forward pass of the per-edge work, same numbers to round-off. ``None``: all at once.
        Returns ``energy`` (B,) float64 and ``energies`` (N,) float64 per-atom energies.
        """
        if not isinstance(numbers, torch.Tensor):  # a PyG Data / Batch
            from .integrations.pyg import from_pyg

            g = from_pyg(numbers)
            numbers, positions, edge_index, shifts, cell, batch = g.numbers, g.positions, g.edge_index, g.shifts, g.cell, g.batch
            num_graphs = g.num_graphs
            tags = g.tags if tags is None else tags
        elif positions is None or edge_index is None or shifts is None or cell is None or batch is None or num_graphs is None:
            raise TypeError("Equiformer takes numbers, positions, edge_index, shifts, cell, batch and num_graphs, or one PyG Data/Batch")
        species = self.species_index(numbers)
        tag_index = self.tag_index(tags, numbers.shape[0]) if self.config.num_tags else None
        dtype = next(self.head.parameters()).dtype  # the network's precision; edge vectors are cast to it
        if edge_chunk is not None:  # chunks are cut at atom boundaries of destination-sorted edges
            edge_index, shifts = sort_by_destination(edge_index, shifts)
        vec64 = edge_vectors(positions, edge_index, shifts, cell, batch)
        vec = vec64.to(dtype)
        r = vec.norm(dim=-1)
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        basis = self.basis(r)
        envelope = self.envelope(r) if self.config.radial_envelope else torch.ones_like(r)

        x = self.atom_embedding(species, dtype)
        if tag_index is not None:
            x = x + self.tag_embedding(tag_index, dtype)
        n = x.shape[0]
        if edge_chunk is None:
            chunks = None
            x = x + self.edge_embedding(n, sh, basis, envelope, edge_index)
        else:
            chunks = split_edges(sh, basis, envelope, edge_index, n, edge_chunk)
            embed = self.edge_embedding
            x = x + checkpointed_sum(lambda *c: [embed(n, *c)], chunks, params=list(embed.parameters()))[0]
        for block in self.blocks:
            x = block(x, sh, basis, envelope, edge_index, batch, num_graphs, chunks)
        out = self.head(self.norm(x)).squeeze(-1)
        energies = out.to(torch.float64) * self.scale + self.shift + self.atomic_energies[species]
        if self.config.energy_offset:
            counts = torch.zeros(num_graphs, dtype=torch.float64, device=energies.device).index_add(
                0, batch, torch.ones_like(energies)
            )
            energies = energies + self.config.energy_offset / counts[batch]
        if self.pair is not None:
            energies = energies + self._pair_energies(species, vec64, edge_index)
        energy = torch.zeros(num_graphs, dtype=torch.float64, device=energies.device).index_add(0, batch, energies)
        return {"energy": energy, "energies": energies}

    def _pair_energies(self, species: torch.Tensor, vec64: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """(N,) float64 per-atom share of the pair repulsion: half of every pair to each atom."""
        assert self.pair is not None
        r = vec64.norm(dim=-1)
        close = torch.nonzero(r < self.pair.max_cutoff).squeeze(-1)
        out = torch.zeros(species.shape[0], dtype=torch.float64, device=species.device)
        if close.numel() == 0:
            return out
        src, dst = edge_index[0, close], edge_index[1, close]
        pair = self.pair(species[dst], species[src], r[close])
        return out.index_add(0, dst, 0.5 * pair)

    def pair_energy(
        self,
        numbers: torch.Tensor,
        positions: torch.Tensor,
        edge_index: torch.Tensor,
        shifts: torch.Tensor,
        cell: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
    ) -> torch.Tensor:
        """(B,) float64 energy of the pair repulsion alone (zeros without one); differentiable, so
        the trainer can fit the network to the labels minus this term."""
        species = self.species_index(numbers)
        energy = torch.zeros(num_graphs, dtype=torch.float64, device=positions.device)
        if self.pair is None:
            return energy
        vec64 = edge_vectors(positions, edge_index, shifts, cell, batch)
        return energy.index_add(0, batch, self._pair_energies(species, vec64, edge_index))

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"elements={c.elements}, cutoff={c.cutoff}, blocks={c.num_blocks}, irreps_node={self.irreps_node}, "
            f"E(3)={c.parity}, params={self.num_parameters():,}"
        )
