"""Convert checkpoints of the reference Equiformer code (atomicarchitects/equiformer) into ours.

Python::

    from equiformer_calc import EquiformerCalculator
    from equiformer_calc.reference import convert_reference
    path = convert_reference("their_best.pth.tar", variant="md17-l2", task_mean=..., task_std=..., out="best.safetensors")
    atoms.calc = EquiformerCalculator(checkpoint=path)

Command line::

    equiformer-calc convert-reference their_best.pth.tar best.safetensors --variant md17-l2 --task-mean M --task-std S

What is read: a ``torch.save`` file whose dict holds the weights under ``state_dict`` (what the
reference's ``main_md17.py`` / ``main_qm9.py`` and the OC20 trainer write; a ``module.`` prefix
from DistributedDataParallel is removed), or a plain state_dict, or a ``.safetensors`` file of a
state_dict. ``torch.load(weights_only=True)`` is used: only tensors and plain containers are
unpickled, and a file that needs any other class (that is, code) is refused with
:class:`ReferenceCheckpointError`. Nothing in the file is executed.

What is written: our safetensors checkpoint whose model uses the reference's behaviour wherever
it differs from our defaults, so that it gives the reference's numbers: per-block layer norm,
SE(3) irreps, plain softmax attention (no envelope, no null neighbour), no envelope on the radial
weights, the reference's radial basis (Gaussian / ExpNorm with cosine cutoff / Bessel with
envelope), the edge-degree embedding with its biases, the readout sum divided by sqrt(average
number of atoms) and de-normalised with the training mean and standard deviation (converted to
eV), OC20's tag embedding. The e3nn second-moment constants of the reference's activations (the
smooth leaky ReLU of the attention, the SiLU of the head) are folded into the next weights.
Every parameter and buffer of the source is accounted for: weights are mapped, derived buffers
(e3nn's Wigner-3j copies and output masks) are checked against what the architecture implies;
anything left over, or missing, is an error that names the keys.

Such a model is NOT smooth at the cutoff (the reference's radial network, biases and softmax do
not vanish there): energies jump when a neighbour crosses the cutoff. Fine for single points,
screening and relaxations with care; not for NVE molecular dynamics. The checkpoint card says so.

OC20 IS2RE models (``variant="oc20-is2re"``) predict the relaxed adsorption energy from the
initial structure ("direct" IS2RE). Their checkpoint is marked ``task: "is2re-direct"``; the
calculator then returns the energy only and refuses forces (see ``calculator.py``).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from ase.data import chemical_symbols
from e3nn import o3

from .checkpoint import save_checkpoint
from .io import file_kind, file_sha256
from .model import CheckpointInfo, Equiformer, EquiformerConfig
from .nn import IrrepsLinear, SmoothLeakyReLU

__all__ = [
    "VARIANTS",
    "ENERGY_UNITS",
    "ReferenceCheckpointError",
    "ReferenceVariant",
    "read_reference_checkpoint",
    "reference_model",
    "convert_reference",
]

log = logging.getLogger(__name__)


#: energy units the reference models are trained in -> eV per unit
ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": 0.0433641153087705,  # 4184 J / N_A / e
    "kJ/mol": 0.0103642688,
    "Hartree": 27.211386245988,
}

CARD_NOTE = (
    "Converted from the reference Equiformer code with its exact behaviour: the model is NOT smooth at "
    "the cutoff (radial network, biases and softmax weights do not vanish there), so the energy jumps "
    "when a neighbour crosses the cutoff; do not use it for NVE molecular dynamics."
)


class ReferenceCheckpointError(ValueError):
    """A reference checkpoint that cannot be read or converted; the message says which and why."""


@dataclass(frozen=True)
class ReferenceVariant:
    """One family of published reference models and its constants.

    kwargs: the reference constructor's keyword arguments (sizes, basis ...); family: ``md17``
    (``GraphAttentionTransformerMD17``), ``qm9`` (``GraphAttentionTransformer``) or ``oc20``
    (``GraphAttentionTransformerOC20``); atom_types: the one-hot width of its atom embedding;
    atom_rows: Z -> embedding row (None: row = Z); avg_num_nodes / avg_degree: the module
    constants of its source file; task: what its output is.
    """

    name: str
    family: str
    entry: str
    kwargs: dict[str, Any]
    atom_types: int
    avg_num_nodes: float
    avg_degree: float
    energy_unit: str
    task: str
    atom_rows: dict[int, int] | None = None
    num_tags: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)


_COMMON = dict(
    num_layers=6, irreps_node_attr="1x0e", fc_neurons=[64, 64], irreps_feature="512x0e", irreps_pre_attn=None,
    rescale_degree=False, nonlinear_message=True, norm_layer="layer", max_radius=5.0, use_attn_head=False,
)
_QM9_STATS = (18.03065905448718, 15.57930850982666)  # _AVG_NUM_NODES, _AVG_DEGREE of QM9 (MD17 reuses them)

VARIANTS: dict[str, ReferenceVariant] = {
    "md17-l2": ReferenceVariant(
        "md17-l2", "md17", "graph_attention_transformer_nonlinear_exp_l2_md17",
        dict(_COMMON, irreps_node_embedding="128x0e+64x1e+32x2e", irreps_sh="1x0e+1x1e+1x2e", number_of_basis=32,
             basis_type="exp", irreps_head="32x0e+16x1e+8x2e", num_heads=4, irreps_mlp_mid="384x0e+192x1e+96x2e"),
        atom_types=64, avg_num_nodes=_QM9_STATS[0], avg_degree=_QM9_STATS[1], energy_unit="kcal/mol", task="potential",
    ),
    "md17-l3": ReferenceVariant(
        "md17-l3", "md17", "graph_attention_transformer_nonlinear_exp_l3_md17",
        dict(_COMMON, irreps_node_embedding="128x0e+64x1e+64x2e+32x3e", irreps_sh="1x0e+1x1e+1x2e+1x3e",
             number_of_basis=32, basis_type="exp", irreps_head="32x0e+16x1e+16x2e+8x3e", num_heads=4,
             irreps_mlp_mid="384x0e+192x1e+192x2e+96x3e"),
        atom_types=64, avg_num_nodes=_QM9_STATS[0], avg_degree=_QM9_STATS[1], energy_unit="kcal/mol", task="potential",
    ),
    "qm9": ReferenceVariant(
        "qm9", "qm9", "graph_attention_transformer_nonlinear_l2",
        dict(_COMMON, irreps_node_embedding="128x0e+64x1e+32x2e", irreps_sh="1x0e+1x1e+1x2e", number_of_basis=128,
             basis_type="gaussian", irreps_head="32x0e+16x1e+8x2e", num_heads=4, irreps_mlp_mid="384x0e+192x1e+96x2e"),
        atom_types=5, avg_num_nodes=_QM9_STATS[0], avg_degree=_QM9_STATS[1], energy_unit="eV", task="property",
        atom_rows={1: 0, 6: 1, 7: 2, 8: 3, 9: 4},
        notes=("a QM9 model predicts one molecular property (its --target); the checkpoint returns it as 'energy' "
               "and refuses forces unless converted with task='potential'",),
    ),
    "oc20-is2re": ReferenceVariant(
        "oc20-is2re", "oc20", "graph_attention_transformer (OC20 registry)",
        dict(_COMMON, irreps_node_embedding="256x0e+128x1e", irreps_sh="1x0e+1x1e", number_of_basis=128,
             basis_type="gaussian", irreps_head="32x0e+16x1e", num_heads=8, irreps_mlp_mid="768x0e+384x1e",
             max_neighbors=500, use_auxiliary_task=False, use_attention_head=False, use_node_attr=False,
             use_atom_edge_attr=False),
        atom_types=84, avg_num_nodes=77.81317, avg_degree=23.395238876342773, energy_unit="eV", task="is2re-direct",
        num_tags=3,
        notes=("predicts the relaxed adsorption energy (OC20 references) from the initial structure; needs OC20 "
               "tags (0 subsurface, 1 surface, 2 adsorbate)",
               "the reference keeps at most max_neighbors neighbours per atom; this model keeps all within the cutoff"),
    ),
}

TASKS = ("potential", "is2re-direct", "property")


# ------------------------------------------------------------------------------------------ reading


def read_reference_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, extras) of a reference checkpoint, read without unpickling any code.

    extras may hold ``normalizers`` (OC20 trainer: target mean/std), ``config`` (OC20 trainer) and
    ``ema`` (present but not used). Raises :class:`ReferenceCheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ReferenceCheckpointError(f"reference checkpoint {str(path)!r} does not exist")
    kind, looks = file_kind(path)
    if kind not in ("safetensors", "zip", "pickle"):
        raise ReferenceCheckpointError(
            f"{path} is not a checkpoint: it looks like {looks}; give the reference code's torch.save file "
            f"(.pt, .pth, .pth.tar) or a .safetensors file of its state_dict")
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                raw: Any = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors' own error types
            raise ReferenceCheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
        if header.get("format") == "equiformer-calc":
            raise ReferenceCheckpointError(f"{path} is already an equiformer-calc checkpoint; load it directly")
    else:
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()
            raise ReferenceCheckpointError(
                f"{path} needs code to be unpickled ({first[-1] if first else 'unsupported global'}); refusing to "
                "load it: only tensors and plain containers are read (torch.load weights_only=True). Re-save the "
                "weights in the reference environment with torch.save({'state_dict': model.state_dict()}, ...)"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise ReferenceCheckpointError(f"{path} is not a readable torch.save file ({exc})") from None
    if not isinstance(raw, Mapping):
        raise ReferenceCheckpointError(f"{path}: expected a dict, found {type(raw).__name__}")
    extras: dict[str, Any] = {}
    if "state_dict" in raw:
        state = raw["state_dict"]
        extras = {k: v for k, v in raw.items() if k in ("normalizers", "config", "ema")}
    elif raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = raw
    else:
        raise ReferenceCheckpointError(
            f"{path}: no 'state_dict' entry and not a plain state_dict (top-level keys: {sorted(map(str, raw))[:10]})"
        )
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReferenceCheckpointError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state), extras


# ------------------------------------------------------------------------------------- architecture


#: reference keywords accepted under another name (the registry functions' names)
_ALIASES = {"radius": "max_radius", "num_basis": "number_of_basis"}
#: reference keywords that do not change the trained function in evaluation (dropouts, how the
#: graph is built: ours builds it), or that are read elsewhere (task_mean / task_std)
_IGNORED = {
    "alpha_drop", "proj_drop", "out_drop", "drop_path_rate", "otf_graph", "use_pbc", "irreps_in", "num_atoms",
    "bond_feat_dim", "num_targets", "irreps_atom_edge_attr", "auxiliary_head_dropout", "task_mean", "task_std",
    "mean", "std",
}
#: reference keywords whose only supported value is None
_MUST_BE_NONE = ("scale", "atomref")


def _reference_kwargs(variant: ReferenceVariant, extras: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(variant.kwargs)

    def merge(values: Mapping[str, Any], strict: bool) -> None:
        for k, v in values.items():
            k = _ALIASES.get(k, k)
            if k in _MUST_BE_NONE:
                if v is not None:
                    raise ReferenceCheckpointError(f"reference models built with {k}={v!r} are not supported (only None)")
            elif k in kwargs:
                kwargs[k] = v
            elif strict and k not in _IGNORED:
                raise ReferenceCheckpointError(f"unknown reference keyword {k!r}; known: {sorted(kwargs)}")

    config = extras.get("config")
    if isinstance(config, Mapping):  # OC20 trainer checkpoints carry the model's settings
        model_cfg = config.get("model_attributes") or config.get("model") or {}
        if isinstance(model_cfg, Mapping):
            merge(model_cfg, strict=False)
    merge(overrides or {}, strict=True)
    return kwargs


def _check_supported(kw: Mapping[str, Any]) -> None:
    unsupported = []
    if kw.get("norm_layer") != "layer":
        unsupported.append(f"norm_layer={kw.get('norm_layer')!r} (only 'layer')")
    if kw.get("rescale_degree"):
        unsupported.append("rescale_degree=True")
    if not kw.get("nonlinear_message"):
        unsupported.append("nonlinear_message=False (the linear-message models)")
    if kw.get("use_attn_head") or kw.get("use_attention_head"):
        unsupported.append("an attention head")
    if kw.get("use_node_attr") or kw.get("use_atom_edge_attr"):
        unsupported.append("use_node_attr / use_atom_edge_attr")
    if str(o3.Irreps(kw.get("irreps_node_attr", "1x0e"))) != "1x0e":
        unsupported.append(f"irreps_node_attr={kw.get('irreps_node_attr')!r}")
    node = o3.Irreps(kw["irreps_node_embedding"])
    pre = kw.get("irreps_pre_attn")
    if pre is not None and o3.Irreps(pre) != node:
        unsupported.append(f"irreps_pre_attn={pre!r} different from the node irreps")
    for name in ("irreps_node_embedding", "irreps_sh", "irreps_head", "irreps_mlp_mid", "irreps_feature"):
        if any(ir.p != 1 for _, ir in o3.Irreps(kw[name])):
            unsupported.append(f"{name}={kw[name]!r}: odd-parity (E(3)) reference models")
    if o3.Irreps(kw["irreps_sh"]) != o3.Irreps([(1, (l, 1)) for l in range(o3.Irreps(kw["irreps_sh"]).lmax + 1)]):
        unsupported.append(f"irreps_sh={kw['irreps_sh']!r} (must be 1x0e+1x1e+... up to some l)")
    if kw.get("basis_type") not in ("gaussian", "exp", "bessel"):
        unsupported.append(f"basis_type={kw.get('basis_type')!r}")
    if unsupported:
        raise ReferenceCheckpointError("reference model settings not supported: " + "; ".join(unsupported))


def _irreps_str(irreps: str) -> str:
    return str(o3.Irreps(irreps))


def reference_model(
    variant: str | ReferenceVariant,
    elements: list[str] | None = None,
    reference_kwargs: Mapping[str, Any] | None = None,
    extras: Mapping[str, Any] | None = None,
    avg_degree: float | None = None,
) -> tuple[Equiformer, dict[str, Any]]:
    """An (untrained) model of ours with the reference variant's architecture and behaviour, and
    the reference keyword arguments it was built from."""
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    kw = _reference_kwargs(v, extras or {}, reference_kwargs)
    _check_supported(kw)
    allowed = _allowed_numbers(v)
    if elements is None:
        elements = [chemical_symbols[z] for z in allowed]
    bad = [s for s in elements if s not in chemical_symbols or chemical_symbols.index(s) not in allowed]
    if bad:
        raise ReferenceCheckpointError(
            f"elements {bad} have no row in the {v.name} atom embedding (it covers {_describe(allowed)})"
        )
    basis = {"gaussian": "gaussian-reference", "exp": "exp-reference", "bessel": "bessel-reference"}[kw["basis_type"]]
    sh = o3.Irreps(kw["irreps_sh"])
    config = EquiformerConfig(
        elements=list(elements),
        cutoff=float(kw["max_radius"]),
        num_blocks=int(kw["num_layers"]),
        irreps_node=_irreps_str(kw["irreps_node_embedding"]),
        lmax=sh.lmax,
        num_heads=int(kw["num_heads"]),
        irreps_head=_irreps_str(kw["irreps_head"]),
        irreps_mlp=_irreps_str(kw["irreps_mlp_mid"]),
        irreps_feature=_irreps_str(kw["irreps_feature"]),
        radial_basis=basis,
        num_basis=int(kw["number_of_basis"]),
        fc_neurons=tuple(int(n) for n in kw["fc_neurons"]),
        envelope_p=5,
        attention="mlp",
        nonlinear_message=True,
        parity=False,
        avg_degree=float(v.avg_degree if avg_degree is None else avg_degree),
        norm="block",
        softmax="plain",
        radial_envelope=False,
        edge_embedding_bias=True,
        num_tags=v.num_tags,
        pair_repulsion=None,  # the reference has no short-range repulsion: exactness first
    )
    return Equiformer(config=config), kw


def _allowed_numbers(v: ReferenceVariant) -> list[int]:
    if v.atom_rows is not None:
        return sorted(v.atom_rows)
    return list(range(1, min(v.atom_types, len(chemical_symbols))))


def _describe(numbers: list[int]) -> str:
    if len(numbers) > 8:
        return f"{chemical_symbols[numbers[0]]}..{chemical_symbols[numbers[-1]]} (Z {numbers[0]}-{numbers[-1]})"
    return ", ".join(chemical_symbols[z] for z in numbers)


# ------------------------------------------------------------------------------------------ mapping


class _Source:
    """The reference state_dict with bookkeeping of which keys were used."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = state
        self.used: set[str] = set()

    def take(self, key: str, numel: int | None = None) -> torch.Tensor:
        if key not in self.state:
            raise ReferenceCheckpointError(f"the reference state_dict has no {key!r} (is the variant / are the sizes right?)")
        t = self.state[key]
        if numel is not None and t.numel() != numel:
            raise ReferenceCheckpointError(
                f"{key} has {t.numel()} values, the architecture needs {numel} (is the variant / are the sizes right?)"
            )
        self.used.add(key)
        return t.detach().to(torch.float64)

    def has(self, key: str) -> bool:
        return key in self.state

    def check_derived(self) -> None:
        """e3nn's Wigner-3j copies must be e3nn's own; output masks 0/1; external weights empty."""
        for key, t in self.state.items():
            if key in self.used:
                continue
            name = key.rsplit(".", 1)[-1]
            if name.startswith("_w3j_"):
                l1, l2, l3 = (int(c) for c in name[len("_w3j_") :].split("_"))
                expected = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
                if t.shape != expected.shape or not torch.allclose(t.double(), expected, atol=1e-6):
                    raise ReferenceCheckpointError(
                        f"{key} differs from e3nn's Wigner 3j symbol ({l1},{l2},{l3}): the checkpoint was written "
                        "with an e3nn whose basis conventions differ from this one's"
                    )
                self.used.add(key)
            elif name == "output_mask":
                if not bool(((t == 0) | (t == 1)).all()):
                    raise ReferenceCheckpointError(f"{key} is not a 0/1 mask")
                self.used.add(key)
            elif name == "weight" and t.numel() == 0:  # e3nn TPs with external weights / no weights
                self.used.add(key)


def _type_offsets(irreps: o3.Irreps) -> list[int]:
    """For each block of ``irreps``: where its channels start among all channels of its irrep type."""
    seen: dict[o3.Irrep, int] = {}
    out = []
    for mul, ir in irreps:
        out.append(seen.get(ir, 0))
        seen[ir] = seen.get(ir, 0) + mul
    return out


def _ref_linear(src: _Source, prefix: str, irreps_in: o3.Irreps, irreps_out: o3.Irreps, bias: bool = True) -> tuple[dict, torch.Tensor | None]:
    """The reference's LinearRS / FullyConnectedTensorProductRescale(x, 1x0e) at ``prefix`` as one
    dense matrix per irrep type (channels of that type in layout order) and its 0e bias vector.

    The e3nn tensor product with the scalar 1 has one 'uvw' instruction per (input block, output
    block) of equal irreps, weights (mul_in, 1, mul_out) in instruction order, coefficient 1
    (component normalisation of a l x 0 -> l path, no path normalisation)."""
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
    sizes = []
    for i1, (m1, ir1) in enumerate(irreps_in):
        for io, (mo, iro) in enumerate(irreps_out):
            if iro == ir1:
                sizes.append((i1, io, m1, mo))
    flat = src.take(f"{prefix}.tp.weight", sum(m1 * mo for _, _, m1, mo in sizes))
    mask_key = f"{prefix}.tp.output_mask"
    if src.has(mask_key) and src.state[mask_key].numel() != irreps_out.dim:
        raise ReferenceCheckpointError(
            f"{mask_key} has {src.state[mask_key].numel()} entries, the architecture needs {irreps_out.dim} "
            "(is the variant / are the sizes right?)"
        )

    off_in, off_out = _type_offsets(irreps_in), _type_offsets(irreps_out)
    total_in: dict[o3.Irrep, int] = {}
    total_out: dict[o3.Irrep, int] = {}
    for mul, ir in irreps_in:
        total_in[ir] = total_in.get(ir, 0) + mul
    for mul, ir in irreps_out:
        total_out[ir] = total_out.get(ir, 0) + mul
    dense = {ir: torch.zeros(total_in.get(ir, 0), n, dtype=torch.float64) for ir, n in total_out.items()}
    k = 0
    for i1, io, m1, mo in sizes:
        ir = irreps_in[i1].ir
        w = flat[k : k + m1 * mo].view(m1, mo)
        dense[ir][off_in[i1] : off_in[i1] + m1, off_out[io] : off_out[io] + mo] = w
        k += m1 * mo
    b = None
    if bias:
        parts = []
        for n, (mul, ir) in enumerate(b for b in irreps_out.simplify() if b.ir == o3.Irrep("0e")):
            parts.append(src.take(f"{prefix}.bias.{n}", mul))
        b = torch.cat(parts) if parts else None
    return dense, b


def _set_linear(lin: IrrepsLinear, dense: Mapping[o3.Irrep, torch.Tensor], bias: torch.Tensor | None, name: str) -> None:
    """Load per-irrep-type dense matrices (and 0e biases) into our layer (weights are stored
    divided by the layer's 1/sqrt(fan-in) factor)."""
    off_in, off_out = _type_offsets(lin.irreps_in), _type_offsets(lin.irreps_out)
    for ir, m in dense.items():
        n_in = sum(mul for mul, i in lin.irreps_in if i == ir)
        n_out = sum(mul for mul, i in lin.irreps_out if i == ir)
        if m.shape != (n_in, n_out) and m.numel():
            raise ReferenceCheckpointError(f"{name}: {ir} block is {tuple(m.shape)} in the reference, ({n_in}, {n_out}) here")
    with torch.no_grad():
        for (i_in, i_out, alpha), w in zip(lin.paths, lin.weights):
            ir = lin.irreps_in[i_in].ir
            m = dense[ir][off_in[i_in] : off_in[i_in] + w.shape[0], off_out[i_out] : off_out[i_out] + w.shape[1]]
            w.copy_(m / alpha)
        n_bias = 0 if lin.bias is None else lin.bias.numel()
        got = 0 if bias is None else bias.numel()
        if n_bias != got:
            raise ReferenceCheckpointError(f"{name}: {got} biases in the reference, {n_bias} here")
        if lin.bias is not None and bias is not None:
            lin.bias.copy_(bias)


def _map_linear(src: _Source, prefix: str, lin: IrrepsLinear, ref_in: o3.Irreps | None = None, bias: bool = True) -> None:
    ref_in = lin.irreps_in if ref_in is None else o3.Irreps(ref_in)
    if ref_in.simplify() != lin.irreps_in.simplify():
        raise ReferenceCheckpointError(f"{prefix}: input irreps {ref_in} do not match {lin.irreps_in}")
    dense, b = _ref_linear(src, prefix, ref_in, lin.irreps_out, bias=bias)
    _set_linear(lin, dense, b, prefix)


def _map_radial(src: _Source, prefix: str, radial: torch.nn.Module) -> None:
    """RadialProfile: net.{0,1,3,4} = Linear, LayerNorm, Linear, LayerNorm; net.{last} = Linear (no
    bias); offset. Ours: net.* the same, ``out`` the last Linear."""
    with torch.no_grad():
        ours = dict(radial.named_parameters())
        n_hidden = len([m for m in radial.net if isinstance(m, torch.nn.Linear)])
        last = 3 * n_hidden
        for name, p in ours.items():
            if name.startswith("net."):
                key = f"{prefix}.{name}"
            elif name == "out.weight":
                key = f"{prefix}.net.{last}.weight"
            elif name == "offset":
                key = f"{prefix}.offset"
            else:  # pragma: no cover - RadialMLP has no other parameters
                raise ReferenceCheckpointError(f"unexpected radial parameter {name}")
            t = src.take(key, p.numel())
            if t.shape != p.shape:
                raise ReferenceCheckpointError(f"{key}: shape {tuple(t.shape)}, expected {tuple(p.shape)}")
            p.copy_(t)


def _copy(src: _Source, key: str, param: torch.Tensor, scale: float = 1.0) -> None:
    with torch.no_grad():
        param.copy_(src.take(key, param.numel()).view(param.shape) * scale)


def _act_constant(act: torch.nn.Module) -> float:
    """e3nn's second-moment normalisation constant of ``act`` (what the reference's Activation
    multiplies the activation by); 1.0 when e3nn leaves it as is."""
    from e3nn.math import normalize2mom

    n = normalize2mom(act)
    return 1.0 if getattr(n, "_is_id", False) else float(n.cst)


def _map_embedding(src: _Source, prefix: str, embedding: torch.nn.Module, rows: list[int], num_types: int) -> None:
    """NodeEmbeddingNetwork (one-hot of ``num_types`` -> LinearRS with bias) onto our
    AtomEmbedding whose row k is reference row ``rows[k]``."""
    lin = embedding.linear
    dense, b = _ref_linear(src, f"{prefix}.atom_type_lin", o3.Irreps(f"{num_types}x0e"), lin.irreps_out)
    scalar = o3.Irrep("0e")
    # ours computes (onehot * sqrt(n)) @ (w / sqrt(n)), n = len(rows): the layer's effective matrix
    # must be the reference rows divided by sqrt(n) (then w holds the reference rows as they are)
    _set_linear(lin, {scalar: dense[scalar][rows] / math.sqrt(len(rows))}, b, prefix)


def _map_weights(model: Equiformer, src: _Source, v: ReferenceVariant, rows: list[int]) -> None:
    cfg = model.config
    with torch.no_grad():
        # --- embeddings
        _map_embedding(src, "atom_embed", model.atom_embedding, rows, v.atom_types)
        if v.num_tags:
            _map_embedding(src, "tag_embed", model.tag_embedding, list(range(v.num_tags)), v.num_tags)
        basis = model.basis
        if cfg.radial_basis == "exp-reference":
            _copy(src, "rbf.means", basis.means)
            _copy(src, "rbf.betas", basis.betas)
        elif cfg.radial_basis == "gaussian-reference":
            for name in ("mean", "std", "weight", "bias"):
                _copy(src, f"rbf.{name}", getattr(basis, name))
        else:  # bessel-reference: GemNet's frequencies act on r / r_c
            _copy(src, "rbf.rbf.frequencies", basis.freqs, scale=1.0 / cfg.cutoff)
        emb = model.edge_embedding
        # 'exp' maps the constant 1 to the node irreps with weights and biases: fold the bias in
        dense, b = _ref_linear(src, "edge_deg_embed.exp", o3.Irreps("1x0e"), emb.expand.irreps_out)
        scalar = o3.Irrep("0e")
        if b is not None:
            dense[scalar] = dense[scalar] + b.view(1, -1)
        _set_linear(emb.expand, dense, None, "edge_deg_embed.exp")
        _map_radial(src, "edge_deg_embed.rad", emb.radial)
        _map_linear(src, "edge_deg_embed.proj", emb.proj, emb.dtp.irreps_out.simplify())
        # --- blocks
        c_alpha = _act_constant(SmoothLeakyReLU(0.2))
        for k, block in enumerate(model.blocks):
            p = f"blocks.{k}"
            _copy(src, f"{p}.norm_1.affine_weight", block.norm1.weight)
            _copy(src, f"{p}.norm_1.affine_bias", block.norm1.bias)
            _copy(src, f"{p}.norm_2.affine_weight", block.norm2.weight)
            _copy(src, f"{p}.norm_2.affine_bias", block.norm2.bias)
            att = block.attn
            _map_linear(src, f"{p}.ga.merge_src", att.merge_src)
            _map_linear(src, f"{p}.ga.merge_dst", att.merge_dst, bias=False)
            _map_radial(src, f"{p}.ga.sep_act.dtp_rad", att.radial)
            _map_linear(src, f"{p}.ga.sep_alpha", att.alpha_linear, att.dtp.irreps_out)  # unsimplified in the reference
            _map_linear(src, f"{p}.ga.sep_act.lin", att.value_linear)
            _copy(src, f"{p}.ga.sep_value.dtp.tp.weight", att.value_dtp.weight)
            _map_linear(src, f"{p}.ga.sep_value.lin", att.value_out)
            _copy(src, f"{p}.ga.alpha_dot", att.alpha_dot, scale=c_alpha)
            _map_linear(src, f"{p}.ga.proj", att.proj)
            _map_linear(src, f"{p}.ffn.fctp_1", block.ffn.linear1)
            _map_linear(src, f"{p}.ffn.fctp_2", block.ffn.linear2)
            if block.shortcut is not None:
                _map_linear(src, f"{p}.ffn_shortcut", block.shortcut)
        # --- readout
        _copy(src, "norm.affine_weight", model.norm.weight)
        _copy(src, "norm.affine_bias", model.norm.bias)
        _map_linear(src, "head.0", model.head[0])
        dense, b = _ref_linear(src, "head.2", model.head[2].irreps_in, model.head[2].irreps_out)
        c_silu = _act_constant(torch.nn.SiLU())
        _set_linear(model.head[2], {ir: m * c_silu for ir, m in dense.items()}, b, "head.2")


# ---------------------------------------------------------------------------------------- conversion


def convert_reference(
    path: str | os.PathLike,
    variant: str = "md17-l2",
    out: str | os.PathLike | None = None,
    task_mean: float | None = None,
    task_std: float | None = None,
    energy_unit: str | None = None,
    elements: list[str] | None = None,
    reference_kwargs: Mapping[str, Any] | None = None,
    avg_num_nodes: float | None = None,
    avg_degree: float | None = None,
    task: str | None = None,
    drop_auxiliary_head: bool = False,
) -> Path | Equiformer:
    """Convert the reference checkpoint at ``path``; write it to ``out`` (returns the path) or,
    with ``out=None``, return the in-memory model (``model.metadata`` holds what would be written).

    variant: one of :data:`VARIANTS`. task_mean / task_std: the training-set mean and standard
    deviation the reference de-normalises with (``main_md17.py`` / ``main_qm9.py`` log them as
    "Training set mean: ..., std: ..."; OC20 trainer checkpoints store them, and then they are read
    from the file). energy_unit: the unit of the reference's energies (MD17: kcal/mol; QM9, OC20:
    eV), converted to eV. elements: restrict the elements the converted model accepts (default:
    every row of the reference embedding). reference_kwargs: override the reference constructor's
    keyword arguments (sizes of a custom run). avg_num_nodes / avg_degree: override the
    reference's module constants (if the reference code was edited). task: override the variant's
    ("potential", "is2re-direct", "property"). drop_auxiliary_head: ignore the weights of OC20's
    auxiliary IS2RS position head (it does not affect the energy).
    """
    if variant not in VARIANTS:
        raise ReferenceCheckpointError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    task = task or v.task
    if task not in TASKS:
        raise ReferenceCheckpointError(f"task must be one of {TASKS}, got {task!r}")
    energy_unit = energy_unit or v.energy_unit
    if energy_unit not in ENERGY_UNITS:
        raise ReferenceCheckpointError(f"unknown energy unit {energy_unit!r}; choose one of {sorted(ENERGY_UNITS)}")
    path = Path(path)
    state, extras = read_reference_checkpoint(path)
    if task_mean is None or task_std is None:
        norm = (extras.get("normalizers") or {}).get("target") if isinstance(extras.get("normalizers"), Mapping) else None
        if isinstance(norm, Mapping) and "mean" in norm and "std" in norm:
            task_mean = float(norm["mean"]) if task_mean is None else task_mean
            task_std = float(norm["std"]) if task_std is None else task_std
            log.info("target mean %.6g and std %.6g read from the checkpoint's normalizers", task_mean, task_std)
    if task_mean is None or task_std is None:
        raise ReferenceCheckpointError(
            "give task_mean and task_std: the training-set mean and standard deviation the reference model was "
            "trained against (its training log prints 'Training set mean: M, std: S'; 0 and 1 if it used none)"
        )
    if not (math.isfinite(task_mean) and math.isfinite(task_std) and task_std > 0):
        raise ReferenceCheckpointError(f"task_std must be positive and both finite, got mean={task_mean}, std={task_std}")
    if "ema" in extras and extras["ema"] is not None:
        log.warning("%s holds EMA weights as well; the plain 'state_dict' weights are converted", path)
    n_nodes = float(avg_num_nodes if avg_num_nodes is not None else v.avg_num_nodes)
    n_degree = float(avg_degree if avg_degree is not None else v.avg_degree)
    model, kw = reference_model(v, elements, reference_kwargs, extras, avg_degree=n_degree)
    rows = [v.atom_rows[z] if v.atom_rows is not None else z for z in model.atomic_numbers]
    if drop_auxiliary_head:
        state = {k: t for k, t in state.items() if not k.startswith("auxiliary_head.")}
    src = _Source(state)
    _map_weights(model, src, v, rows)
    src.check_derived()
    left = sorted(set(state) - src.used)
    if left:
        hint = " (OC20's auxiliary position head: pass drop_auxiliary_head=True)" if any(
            k.startswith("auxiliary_head.") for k in left) else ""
        raise ReferenceCheckpointError(
            f"{len(left)} reference tensors have no place in the {variant} architecture{hint}: {left[:12]}"
            + (" ..." if len(left) > 12 else "")
        )
    factor = ENERGY_UNITS[energy_unit]
    with torch.no_grad():
        model.scale.fill_(task_std * factor / math.sqrt(n_nodes))
    model.config.energy_offset = float(task_mean * factor)
    meta = {
        "task": task,
        "variant": variant,
        "source": {
            "file": path.name,
            "sha256": file_sha256(path),
            "code": "atomicarchitects/equiformer",
            "model": v.entry,
            "reference_kwargs": {k: (list(x) if isinstance(x, tuple) else x) for k, x in kw.items()},
            "task_mean": task_mean,
            "task_std": task_std,
            "energy_unit": energy_unit,
            "ev_per_unit": factor,
            "avg_num_nodes": n_nodes,
            "avg_degree": n_degree,
            "dropped_auxiliary_head": bool(drop_auxiliary_head),
        },
        "card": {
            "smooth_at_cutoff": False,
            "note": CARD_NOTE,
            "variant_notes": list(v.notes),
        },
    }
    if task != "potential":  # no forces or stress from such a model
        meta["units"] = {"energy": "eV", "length": "Angstrom"}
    if task == "is2re-direct":
        meta["target"] = "relaxed adsorption energy (OC20 references) predicted from the initial structure"
    model.checkpoint = CheckpointInfo(metadata=meta)
    if out is None:
        return model
    return save_checkpoint(model, out, metadata=meta)
