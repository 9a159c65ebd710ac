"""Uncertainty from a committee of readout heads on the model's shared, frozen trunk (issue 28).

Why heads: the trunk (embeddings + transformer blocks) is ~all of a model call; a readout head is a
64 x 64 MLP on each atom's scalar features. ``M`` heads on one trunk give ``M`` energies for the price of
one call, where ``M`` fine-tuned full models cost ``M`` calls (``benchmarks/uncertainty.py`` measures
both kinds on held-out frames: how well the spread ranks the real errors, and what it costs).

A member ``m`` replaces the model's head ``o(f) = w2 . SiLU(A f + a) + c`` (``f`` an atom's trunk
features) by ``o_m(f) = w_m . SiLU(A_m f + a) + b_m[Z]``: ``A_m`` the base head's first layer plus a
seeded random perturbation, ``w_m`` / ``b_m`` (one bias per element) fitted in closed form (ridge towards
the base head's ``w2``) to the reference energies of a bootstrap resample of the training frames. Its
energy is the model's energy with the base head's share replaced by the member's:
``E_m = E - scale * sum_i (o(f_i) - o_m(f_i))``. The reported energy stays the model's own ``E``;
``energy_uncertainty`` is the standard deviation of the ``E_m`` over members (population, ddof 0),
``energy_committee`` the ``E_m`` themselves (so that differences such as adsorption energies get their
own spread, with the members' correlated errors cancelling), and ``forces_uncertainty`` per atom the
root-mean-square over members of ``|F_m - mean_m F_m|`` with ``F_m = -dE_m/dx`` (one extra backward
pass per member, so forces' uncertainty is asked for separately: :data:`UNCERTAINTY_MODES`).

The heads' energies barely spread where the model's energy errors are large (those errors are
systematic: every member fitted to the same data shares them). So a committee may also carry an
:class:`~equiformer_calc.energy_error.EnergyErrorModel` (:func:`add_error_model`): the error the model
makes on the training frames whose adsorbate atoms look most alike to the readout (``p``, eV, signed),
and a novelty term for features outside the training frames' distribution (``q``, eV). They enter every
member as fixed-sign shifts, ``E_m += z_m p + y_m q`` (:func:`~equiformer_calc.energy_error.sign_patterns`),
so that ``energy_uncertainty`` stays the members' spread (now about ``sqrt(heads' variance + p^2 + q^2)``)
and an adsorption energy computed member by member gets the estimated error of the difference. With the
error model's ``magnitude`` mode ``p`` is the expected size of the error (the neighbours' mean absolute error,
``p >= 0``) rather than its signed estimate. The reported energy is still the model's own; forces'
uncertainty is the heads' alone.

Files: ``<checkpoint>.committee.safetensors`` next to the checkpoint (tensors ``A`` (M, F, F), ``a``
(M, F), ``w`` (M, F), ``b`` (M, n_elements), and with an error model its ``err.*`` tensors; JSON metadata
with the sha256 of the checkpoint file it belongs to). A committee is tied to those weights: :func:`load_committee` refuses a mismatch
(:class:`CommitteeError`) when the uncertainty was asked for explicitly, and ignores the committee with
a logged warning when it was only the default (a replaced default checkpoint keeps working, without
uncertainty, until its own committee is fitted with :func:`fit_head_committee`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .graph import AtomicGraph
from .model import Equiformer
from .autograd import compute
from .energy_error import TENSORS as ERROR_TENSORS, TRACKED_ELEMENTS, EnergyErrorModel, fit_energy_error_model, sign_patterns

__all__ = [
    "add_error_model", "attach_committee", "COMMITTEE_SUFFIX", "UNCERTAINTY_MODES", "CommitteeError", "HeadCommittee", "committee_path", "load_committee",
    "compute_with_uncertainty", "fit_head_committee", "head_inputs", "resolve_uncertainty", "TrunkFeatures",
    "trunk_features",
]

log = logging.getLogger(__name__)

COMMITTEE_SUFFIX = ".committee.safetensors"
#: ``"energy"``: energies' spread only (free: the heads share one trunk call); ``"forces"``: forces' too
#: (one extra backward pass per member); ``"off"``: none. ``True`` means "forces", ``False`` "off".
UNCERTAINTY_MODES = ("off", "energy", "forces")


class CommitteeError(ValueError):
    """A committee file that does not belong to the model (another checkpoint's sha256), or cannot be read."""


def resolve_uncertainty(value: Any) -> str:
    """``uncertainty`` as given (a mode of :data:`UNCERTAINTY_MODES`, True, False or None) -> a mode."""
    if value is True:
        return "forces"
    if value is False or value is None:
        return "off"
    if isinstance(value, str) and value.lower() in UNCERTAINTY_MODES:
        return value.lower()
    raise ValueError(f"uncertainty must be one of {UNCERTAINTY_MODES}, True or False, got {value!r}")


def committee_path(checkpoint: str | os.PathLike) -> Path:
    """Where the committee of a checkpoint file lives: ``X.safetensors`` -> ``X.committee.safetensors``."""
    path = Path(checkpoint)
    return path.with_name(path.name.removesuffix(".safetensors") + COMMITTEE_SUFFIX)


@dataclass
class HeadCommittee:
    """``M`` readout heads for one model (see the module's docstring for the method).

    A (M, F, F) and a (M, F): the members' first layers (``h = SiLU(f @ A[m].T + a[m])``); w (M, F) and
    b (M, n_elements): their readouts. ``base_sha256``: the checkpoint file they belong to;
    ``metadata``: how they were fitted and calibrated (``threshold_energy_per_atom``: the spread per
    atom above which a number counts as uncertain).
    """

    A: torch.Tensor
    a: torch.Tensor
    w: torch.Tensor
    b: torch.Tensor
    base_sha256: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the energy-error model that energies' uncertainty adds to the heads' spread (None: heads only)
    error_model: EnergyErrorModel | None = None

    @property
    def members(self) -> int:
        return int(self.w.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "HeadCommittee":
        """A copy on ``device`` in ``dtype`` (the predictor's)."""
        conv = {k: getattr(self, k).to(device=device, dtype=dtype) for k in ("A", "a", "w", "b")}
        error = self.error_model.to(device, dtype) if self.error_model is not None else None
        return HeadCommittee(**conv, base_sha256=self.base_sha256, metadata=dict(self.metadata), error_model=error)

    def outputs(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """(M, N) per-atom head outputs of every member from (N, F) trunk features."""
        h = torch.nn.functional.silu(torch.einsum("nf,mgf->mng", features, self.A) + self.a[:, None, :])
        return torch.einsum("mng,mg->mn", h, self.w) + self.b[:, species]

    def compute(self, model: Equiformer, graph: AtomicGraph, forces: bool = True, stress: bool = False,
                memory: str = "fast", force_uncertainty: bool = False) -> dict[str, torch.Tensor]:
        """:func:`compute_with_uncertainty` with this committee (the predictor's hook)."""
        return compute_with_uncertainty(model, self, graph, forces, stress, memory, force_uncertainty)

    def unbatch(self, out: dict[str, torch.Tensor], b: int, lo: int, hi: int) -> dict[str, Any]:
        """The committee's entries of structure ``b`` (atoms ``lo:hi``) of a batched :meth:`compute`
        output, as the predictor's numpy results (the predictor's other hook)."""
        r: dict[str, Any] = {}
        if "energy_uncertainty" in out:
            r["energy_uncertainty"] = float(out["energy_uncertainty"][b])
            r["energy_committee"] = out["energy_committee"][b].detach().cpu().numpy().copy()
        if "forces_uncertainty" in out:
            r["forces_uncertainty"] = out["forces_uncertainty"][lo:hi].detach().cpu().double().numpy()
        return r

    def save(self, path: str | os.PathLike) -> Path:
        """Write the committee (atomically) as safetensors with JSON metadata."""
        from safetensors.torch import save_file

        from .io import atomic_path

        path = Path(path)
        meta = {"format": "equiformer-calc-committee", "base_sha256": self.base_sha256 or "",
                "metadata": json.dumps(self.metadata)}
        tensors = {k: getattr(self, k).detach().cpu().contiguous().float() for k in ("A", "a", "w", "b")}
        if self.error_model is not None:
            tensors.update({f"err.{k}": v for k, v in self.error_model.tensors().items()})
            meta["error_model"] = json.dumps({"k": self.error_model.k, "scale": self.error_model.scale,
                                              "magnitude": self.error_model.magnitude,
                                              "metadata": self.error_model.metadata})
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadCommittee":
        """Read a committee file (a clear :class:`CommitteeError` for anything else)."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise CommitteeError(f"{path} is not a readable committee file: {exc}") from None
        heads = {"A", "a", "w", "b"}
        errors = {f"err.{k}" for k in ERROR_TENSORS}
        names = set(tensors)
        if meta.get("format") != "equiformer-calc-committee" or names not in (heads, heads | errors):
            raise CommitteeError(f"{path} is not an equiformer-calc committee file")
        error_model = None
        if names == heads | errors:
            info = json.loads(meta.get("error_model", "{}"))
            error_model = EnergyErrorModel(**{k: tensors[f"err.{k}"] for k in ERROR_TENSORS}, k=int(info.get("k", 10)),
                                           scale=float(info.get("scale", 0.0)), metadata=info.get("metadata", {}),
                                           magnitude=bool(info.get("magnitude", False)))
            if tensors["A"].shape[0] % 4:
                raise CommitteeError(f"{path}: an energy-error model needs a multiple of 4 heads")
        return cls(**{k: tensors[k] for k in heads}, base_sha256=meta.get("base_sha256") or None,
                   metadata=json.loads(meta.get("metadata", "{}")), error_model=error_model)


def load_committee(model: Equiformer, path: str | os.PathLike | None = None, required: bool = False) -> HeadCommittee | None:
    """The committee of ``model`` (default: the file next to its checkpoint), checked against the
    checkpoint's sha256.

    ``required``: a missing file or a mismatch raises :class:`CommitteeError` (the user asked for
    uncertainty); otherwise it is logged (a warning for a mismatch) and None is returned.
    """
    info = model.checkpoint
    if path is None:
        if info is None or info.path is None:
            if required:
                raise CommitteeError("this model was not loaded from a checkpoint file, so it has no committee: "
                                     "fit one with equiformer_calc.committee.fit_head_committee and pass it")
            return None
        path = committee_path(info.path)
    path = Path(path)
    if not path.exists():
        if required:
            raise CommitteeError(f"no committee for {info.name if info else 'this model'} ({path} does not exist): "
                                 "uncertainty needs one (fit it with equiformer_calc.committee.fit_head_committee)")
        log.info("no committee at %s: no uncertainty", path)
        return None
    committee = HeadCommittee.load(path)
    sha = info.sha256 if info is not None else None
    if committee.base_sha256 != sha:
        message = (f"the committee {path} belongs to the checkpoint with sha256 {committee.base_sha256}, not to this "
                   f"model's ({sha}): refit it for these weights (equiformer_calc.committee.fit_head_committee)")
        if required:
            raise CommitteeError(message)
        log.warning("%s; running without uncertainty", message)
        return None
    if committee.A.shape[-1] != model.head[0].irreps_in.dim or committee.b.shape[1] != len(model.elements):
        raise CommitteeError(f"{path} has heads for {committee.A.shape[-1]} features and {committee.b.shape[1]} "
                             f"elements, the model {model.head[0].irreps_in.dim} and {len(model.elements)}")
    return committee


@contextlib.contextmanager
def head_inputs(model: Equiformer) -> Iterator[dict[str, Any]]:
    """Within the block, every forward pass of ``model`` leaves its head's input features (``features``,
    (N, F)), its head's output (``base``, (N,)) and the positions it was called with (``positions``) in
    the yielded dict (the last call's), by forward hooks that change nothing."""
    seen: dict[str, Any] = {}

    def on_forward(module: Any, args: tuple) -> None:
        seen["positions"] = args[1] if len(args) > 1 else None

    def on_head(module: Any, args: tuple, output: torch.Tensor) -> None:
        seen["features"], seen["base"] = args[0], output.squeeze(-1)

    handles = [model.register_forward_pre_hook(on_forward), model.head.register_forward_hook(on_head)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def compute_with_uncertainty(
    model: Equiformer, committee: HeadCommittee, graph: AtomicGraph, forces: bool = True, stress: bool = False,
    memory: str = "fast", force_uncertainty: bool = False,
) -> dict[str, torch.Tensor]:
    """:func:`~equiformer_calc.predictor.compute` plus the committee's ``energy_committee`` (B, M),
    ``energy_uncertainty`` (B,) and, with ``force_uncertainty`` (and forces), ``forces_uncertainty`` (N,)."""
    keep = force_uncertainty and forces
    with head_inputs(model) as seen:
        out = compute(model, graph, forces=forces, stress=stress, memory=memory, retain_graph=keep)
    species = model.species_index(graph.numbers)
    delta = model.scale.to(seen["features"].dtype) * (committee.outputs(seen["features"], species) - seen["base"])
    delta = delta.to(torch.float64)  # (M, N): each member's per-atom energy minus the model's
    per_graph = torch.zeros(committee.members, graph.num_graphs, dtype=torch.float64, device=delta.device)
    per_graph.index_add_(1, graph.batch, delta)
    members = out["energy"].detach()[None, :] + per_graph.detach()
    if committee.error_model is not None:  # the error model's estimates, as the members' fixed-sign shifts
        p_atom, q_atom = committee.error_model.atom_terms(seen["features"], species)
        p = torch.zeros(graph.num_graphs, dtype=torch.float64, device=p_atom.device).index_add_(0, graph.batch, p_atom)
        q = torch.zeros(graph.num_graphs, dtype=torch.float64, device=q_atom.device).index_add_(0, graph.batch, q_atom)
        z, y = (s.to(p.device) for s in sign_patterns(committee.members))
        members = members + z[:, None] * p[None, :] + y[:, None] * q[None, :]
    out["energy_committee"] = members.T.contiguous()
    out["energy_uncertainty"] = members.std(dim=0, unbiased=False)
    if keep:
        positions = seen["positions"]
        dF = []
        for m in range(committee.members):
            (g,) = torch.autograd.grad(per_graph[m].sum(), positions, retain_graph=m < committee.members - 1,
                                       allow_unused=True)
            dF.append(torch.zeros_like(positions) if g is None else -g.detach())
        stack = torch.stack(dF)  # (M, N, 3): each member's forces minus the model's
        spread = stack - stack.mean(dim=0, keepdim=True)
        out["forces_uncertainty"] = spread.square().sum(-1).mean(0).sqrt()
    return out


def _ridge_towards(X: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """argmin |X beta - y|^2 + sum_k lam_k (beta_k - prior_k)^2."""
    lhs = X.T @ X + np.diag(lam)
    rhs = X.T @ y + lam * prior
    return np.linalg.solve(lhs, rhs)


@dataclass
class TrunkFeatures:
    """What fitting heads needs from a model's frozen trunk, for a list of frames: per-atom head inputs
    ``features`` (atoms, F), ``owner`` (atoms,) the frame of each atom, ``species`` (atoms,) its element
    index, ``base`` (atoms,) the base head's output, ``energy`` (frames,) the model's energy, ``sizes``."""

    features: np.ndarray
    owner: np.ndarray
    species: np.ndarray
    base: np.ndarray
    energy: np.ndarray
    sizes: np.ndarray
    digest: str


def trunk_features(model: Equiformer, structures: Sequence[Any], batch_atoms: int = 2048,
                   progress: bool = False) -> TrunkFeatures:
    """One energy-only float64 model call per batch of ``structures``, keeping every atom's head input."""
    from .io import progress as progress_bar
    from .predictor import Predictor

    predictor = Predictor(model, dtype="float64", max_atoms_per_batch=batch_atoms, min_distance_ratio=0.0)
    net = predictor.model
    feats: list[np.ndarray] = []
    results: list[dict[str, Any]] = []
    step = 64
    for start in progress_bar(range(0, len(structures), step), disable=not progress, desc="trunk features"):
        chunk = list(structures[start : start + step])
        batch_feats: list[np.ndarray] = []  # the head's input of every model call of this chunk, in order
        hook = net.head.register_forward_hook(lambda mod, args, out: batch_feats.append(args[0].detach().cpu().numpy()))
        try:
            results += predictor.predict(chunk, properties=("energy",))
        finally:
            hook.remove()
        feats.append(np.concatenate(batch_feats))
    F = np.concatenate(feats)
    sizes = np.array([len(s) for s in structures])
    numbers = np.concatenate([s.get_atomic_numbers() for s in structures])
    with torch.no_grad():
        base = net.head(torch.as_tensor(F)).squeeze(-1).numpy()
    return TrunkFeatures(
        features=F, owner=np.repeat(np.arange(len(structures)), sizes),
        species=net.species_index(torch.as_tensor(numbers)).numpy(), base=base,
        energy=np.array([r["energy"] for r in results]), sizes=sizes, digest=_frames_digest(structures),
    )


def fit_head_committee(
    model: Equiformer,
    structures: Sequence[Any] | None,
    energies: Sequence[float],
    members: int = 8,
    seed: int = 0,
    perturb: float = 0.5,
    ridge: float = 1e-3,
    features: TrunkFeatures | None = None,
    progress: bool = False,
) -> HeadCommittee:
    """Fit ``members`` heads on ``model``'s frozen trunk to the reference ``energies`` of ``structures``
    (ase.Atoms; the model's training frames), each on its own bootstrap resample of the frames.

    ``perturb``: the relative size of the seeded random change of each member's first layer (0: the
    base head's layer, members differ only by their resample). ``ridge``: the pull towards the base
    head's readout, relative to the mean diagonal of the normal equations. Only energies are fitted (no
    backward pass through the trunk): one energy-only model call per frame in all, or none with
    ``features`` (from :func:`trunk_features` of the same frames; ``structures`` may then be None).
    """
    if features is None:
        if structures is None:
            raise ValueError("give the structures or their trunk features")
        if len(structures) < 10:
            raise ValueError(f"a committee needs more than a handful of frames, got {len(structures)}")
        features = trunk_features(model, structures, progress=progress)
    n_frames = len(features.sizes)
    if len(energies) != n_frames:
        raise ValueError(f"{n_frames} structures and {len(energies)} energies")
    F, owner, species = features.features, features.owner, features.species
    n_el = len(model.elements)
    scale = float(model.scale)
    head = copy.deepcopy(model.head).to(torch.float64)
    with torch.no_grad():
        lin0, lin2 = head[0], head[2]
        zero = lin0(torch.zeros(1, F.shape[1], dtype=torch.float64))[0].numpy()
        A0 = (lin0(torch.eye(F.shape[1], dtype=torch.float64)).numpy() - zero).T  # h = f @ A0.T + zero
        c2 = lin2(torch.zeros(1, F.shape[1], dtype=torch.float64))[0, 0].item()
        w2 = lin2(torch.eye(F.shape[1], dtype=torch.float64))[:, 0].numpy() - c2
    # what the heads must supply: the reference energy minus everything but the base head's share
    base_share = np.bincount(owner, weights=features.base, minlength=n_frames)
    target = (np.asarray(energies, dtype=float) - (features.energy - scale * base_share)) / scale
    counts = np.zeros((n_frames, n_el))
    np.add.at(counts, (owner, species), 1.0)
    n_atoms = features.sizes.astype(float)
    prior = np.concatenate([w2, np.full(n_el, c2)])
    rng = np.random.default_rng(seed)
    A_all, a_all, w_all, b_all = [], [], [], []
    for _m in range(members):
        A = A0 + perturb * np.abs(A0).mean() * rng.standard_normal(A0.shape)
        H = F @ A.T + zero
        H = H / (1.0 + np.exp(-H))  # SiLU
        X = np.concatenate([np.stack([np.bincount(owner, weights=H[:, k], minlength=n_frames)
                                      for k in range(H.shape[1])], axis=1), counts], axis=1)
        pick = rng.integers(0, n_frames, n_frames)
        Xw, yw = X[pick] / n_atoms[pick, None], target[pick] / n_atoms[pick]  # per-atom energies, as in training
        lam = np.full(X.shape[1], ridge * float(np.mean(np.einsum("ij,ij->j", Xw, Xw))))
        beta = _ridge_towards(Xw, yw, prior, lam)
        A_all.append(A)
        a_all.append(zero)
        w_all.append(beta[: H.shape[1]])
        b_all.append(beta[H.shape[1] :])
    info = model.checkpoint
    return HeadCommittee(
        A=torch.as_tensor(np.array(A_all)), a=torch.as_tensor(np.array(a_all)), w=torch.as_tensor(np.array(w_all)),
        b=torch.as_tensor(np.array(b_all)), base_sha256=info.sha256 if info is not None else None,
        metadata={"kind": "readout-heads", "members": members, "seed": seed, "perturb": perturb, "ridge": ridge,
                  "frames": n_frames, "base": info.name if info is not None else None, "frames_digest": features.digest},
    )


def add_error_model(committee: HeadCommittee, model: Equiformer, features: TrunkFeatures, energies: Sequence[float],
                    k: int = 10, tracked: Sequence[str] = TRACKED_ELEMENTS, magnitude: bool = False,
                    novelty: float = 1.0) -> HeadCommittee:
    """``committee`` with an :class:`~equiformer_calc.energy_error.EnergyErrorModel` fitted to the
    training frames of ``features`` (from :func:`trunk_features`) and their reference ``energies``: from
    then on energies' uncertainty adds the model's estimated error and novelty to the heads' spread.

    ``magnitude``: the error term from the neighbours' absolute errors (see the error model);
    ``novelty``: a factor on the novelty term's default scale (0: no novelty term)."""
    if len(energies) != len(features.sizes):
        raise ValueError(f"{len(features.sizes)} frames and {len(energies)} energies")
    residuals = np.asarray(energies, dtype=float) - features.energy
    error = fit_energy_error_model(features.features, features.owner, features.species, residuals, model.elements,
                                   tracked=tracked, k=k, magnitude=magnitude)
    error.metadata.update(frames_digest=features.digest, novelty_factor=float(novelty))
    error.scale *= float(novelty)
    return dataclasses.replace(committee, error_model=error)


def _frames_digest(structures: Sequence[Any]) -> str:
    """A short digest of the frames a committee was fitted on (numbers and positions)."""
    h = hashlib.sha256()
    for s in structures:
        h.update(np.asarray(s.get_atomic_numbers()).tobytes())
        h.update(np.asarray(s.positions, dtype=np.float64).round(6).tobytes())
    return h.hexdigest()[:16]


def attach_committee(predictor: Any, uncertainty: Any = "auto", committee: HeadCommittee | None = None) -> str:
    """Give ``predictor`` (a :class:`~equiformer_calc.predictor.Predictor`) its model's committee and
    return the uncertainty it now reports (a mode of :data:`UNCERTAINTY_MODES`).

    ``uncertainty="auto"`` (the calculators' default): energies' spread when the checkpoint has a
    committee of its own weights; none, with a logged warning, when the committee belongs to other
    weights. Any explicit mode other than "off" insists: a missing or mismatched committee raises
    :class:`CommitteeError`. ``committee``: use this one instead of the file next to the checkpoint.
    """
    auto = isinstance(uncertainty, str) and uncertainty.lower() == "auto"
    mode = "energy" if auto else resolve_uncertainty(uncertainty)
    if mode == "off":
        predictor.set_committee(None, "off")
        return "off"
    if committee is None:
        committee = load_committee(predictor.model, required=not auto)
    elif committee.base_sha256 is not None and predictor.model.checkpoint is not None \
            and committee.base_sha256 != predictor.model.checkpoint.sha256:
        raise CommitteeError(f"the committee given belongs to the checkpoint with sha256 {committee.base_sha256}, "
                             f"not to this model's ({predictor.model.checkpoint.sha256})")
    predictor.set_committee(committee, mode)
    return predictor.uncertainty
