"""Active learning against a reference calculator ("teacher"): the loop shared by ``equiformer-calc distil``
(the default model against SevenNet-0, issue 23) and ``equiformer-calc specialize`` (a checkpoint against
the user's own reference on the user's own systems, issue 28).

One round, in the spirit of DAgger (the student visits states, the teacher says what is right there):

1. **explore** -- starting structures drawn from the surface pool (every facet, site and adsorbate of
   the plan, or the user's slabs), many of them perturbed (rattled free atoms, an adatom, a vacancy, one
   surface atom displaced, the previous round's student minima re-rattled); the *student* relaxes all of
   them at once (:func:`~equiformer_calc.workflows.batch.relax_batch`, in segments so that frames along
   the path are kept) and runs a short Langevin MD from some of its minima. Every visited frame is a
   candidate, with the student's energy and forces.
2. **prefilter** -- a cheap, student-only ranking keeps the teacher's bill bounded: near-duplicate frames
   of one system are dropped (max free-atom displacement below :attr:`ALConfig.dedupe_tol`), frames of
   systems whose student relaxation was anomalous (surface reconstructed, adsorbate desorbed or
   dissociated, or a large energy drop) and the student minima come first, then systems round-robin.
   At most ``teacher_calls`` candidates go to the teacher.
3. **label** -- teacher single points on those candidates, and the teacher's own few BFGS steps from
   the student minima it disagrees with most (its "verdict on the student's minima": the way back to its
   own minimum), through :class:`~equiformer_calc.data.labellers.LabelJournal`: every call is journalled,
   a rerun after SIGKILL replays them.
4. **select** -- per frame the disagreement ``score = |dE|/N / 5 meV + mean|dF| / 40 meV/A`` (the
   issue's frame targets); frames above ``min_score``, worst first, up to ``max_new_frames``, with
   pathological labels dropped (as data generation does). A ``val_fraction`` of the selected *systems*
   is held out as the round's validation frames.
5. **train** -- continued training from the previous round's best weights on the base data plus every
   round's selected frames so far (each frame once: new frames are not over-weighted), with a fresh
   warm-up + cosine schedule (a warm restart), through the ``train_fn`` the caller passes (the CLI
   passes :func:`equiformer_calc.train.trainer.train`; workflows do not import the trainer). The trainer
   is resumable itself; the phase ends when it reached ``train_steps``.
6. **evaluate** -- optional held-out relaxations (``specialize``): the student relaxes held-out sites and
   their clean slabs, the teacher's relaxations of the same structures are the reference (computed once,
   journalled); relaxed adsorption-energy MAE and displacement statistics per round.

Files (``OUT/roundN/``): ``starts.extxyz.xz``, ``candidates.extxyz.xz``, ``explore.json``,
``teacher_journal.jsonl``, ``labelled.extxyz.xz``, ``frames.extxyz.xz`` (selected, train),
``val.extxyz.xz`` (selected, held out), ``selection.json``, the trainer's files (``best.safetensors``,
``last.safetensors``, ``state.pt``, ``history.json``, ``summary.json``, ...) and ``round.json`` (what each
finished phase recorded). ``OUT/campaign.json`` lists the rounds. Every file is written atomically and a
phase is marked done in ``round.json`` only after its outputs exist, so a rerun of the same command after
SIGKILL continues at the phase (and, inside labelling, at the call) where it stopped.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import lzma
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.geometry import find_mic
from ase.io import read as ase_read
from ase.io import write as ase_write

from ..data.label import _pathology  # the one definition of a pathological label (data generation's)
from ..data.labellers import JournaledCalculator, LabelJournal, LabelStats, resolve_labeller
from ..data.plan import SLAB_CELLS
from ..io import atomic_path, write_json
from ..io import progress as tqdm  # live bar on a terminal, plain lines in a log
from ..surfaces import (
    ADSORBATES,
    FACET_SITES,
    FACETS,
    RANDOM_SITE,
    TEACHER_METALS,
    ase_lattice_constant,
    build_slab,
    check_relaxation,
    constrain_held,
    find_sites,
    fixed_mask,
    place_adsorbate,
    site_positions,
)
from ..surfaces.placement import attach

__all__ = [
    "ALConfig", "SurfaceSpec", "Group", "SystemPool", "plan_pool", "file_pool", "excluded_groups",
    "run_active_learning", "frame_errors", "max_displacement", "heldout_evaluation", "read_frames",
    "write_frames", "write_specialized_checkpoint", "PERTURBATIONS",
]

log = logging.getLogger(__name__)

#: perturbation kinds of a starting structure and their default probabilities
PERTURBATIONS: dict[str, float] = {"none": 0.35, "rattle": 0.25, "adatom": 0.1, "vacancy": 0.1, "displaced": 0.2}
#: frame-error units of the selection score (the issue's frame targets)
E_UNIT = 0.005  # eV/atom
F_UNIT = 0.040  # eV/A

TrainFn = Callable[[dict[str, Any]], dict[str, Any]]


# ============================================================================ configuration
@dataclass
class ALConfig:
    """Settings of an active-learning campaign (one per output folder; recorded in ``campaign.json``).

    Attributes:
        out: the campaign folder (rounds in ``out/round<N>``).
        init: the checkpoint the first round starts from (shipped name or path).
        teacher: labeller name (``sevennet``, ``emt``, ``module:factory``).
        base_train / base_val: labelled files every round trains / validates on besides its new frames.
        first_round: number of the first round this campaign runs (``round0`` may be a plain training run).
        rounds: how many rounds to run (``first_round`` .. ``first_round + rounds - 1``).
        explore_systems: starting structures per round.
        clean_fraction: fraction of them that are clean slabs (no adsorbate).
        perturbations: kind -> probability (see :data:`PERTURBATIONS`).
        relax_segments: student relaxation steps per segment (a frame is kept at the end of each).
        fmax: student relaxation force criterion (eV/A).
        md_systems: student minima that get a short Langevin MD; md_steps / md_frames / md_temperature:
            its length, frames kept and temperature range (K).
        dedupe_tol: frames of one system closer than this (max free-atom displacement, A) are duplicates.
        teacher_calls: teacher single points per round (the prefilter's budget).
        teacher_relax_systems / teacher_relax_steps: student minima the teacher relaxes a few steps from
            (the worst by its verdict), and how many steps (their calls come on top of ``teacher_calls``).
        min_score / max_new_frames: selection threshold and cap.
        val_fraction: selected systems held out as validation.
        train_steps, lr, warmup_steps, min_lr_ratio, time_limit_s, threads: the round's training.
        train_overrides: other trainer fields (batch_size, energy_weight, ...); the init checkpoint's
            recorded training config supplies the rest.
        lattice: metal -> lattice constant (A) for plan surfaces (the teacher's own); missing metals use
            ASE's value. ase_lattice_fraction: share of plan surfaces built at ASE's value anyway.
        seed: every random draw of a round comes from (seed, round, system).
    """

    out: str
    init: str
    teacher: str = "sevennet"
    base_train: list[str] = field(default_factory=list)
    base_val: list[str] = field(default_factory=list)
    first_round: int = 1
    rounds: int = 1
    explore_systems: int = 200
    clean_fraction: float = 0.15
    perturbations: dict[str, float] = field(default_factory=lambda: dict(PERTURBATIONS))
    relax_segments: tuple[int, ...] = (6, 18, 60, 120)
    fmax: float = 0.05
    md_systems: int = 40
    md_steps: int = 40
    md_frames: int = 4
    md_temperature: tuple[float, float] = (300.0, 900.0)
    dedupe_tol: float = 0.05
    teacher_calls: int = 1200
    teacher_relax_systems: int = 40
    teacher_relax_steps: int = 5
    min_score: float = 1.0
    max_new_frames: int = 1500
    val_fraction: float = 0.05
    train_steps: int = 4000
    lr: float = 5e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    time_limit_s: float = 0.0
    threads: int = 1
    train_overrides: dict[str, Any] = field(default_factory=dict)
    lattice: dict[str, float] = field(default_factory=dict)
    ase_lattice_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.first_round < 0:
            raise ValueError(f"rounds must be >= 1 and first_round >= 0, got {self.rounds}, {self.first_round}")
        for name in ("explore_systems", "teacher_calls", "max_new_frames", "train_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.clean_fraction <= 1.0 or not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("clean_fraction must be in [0, 1] and val_fraction in [0, 1)")
        unknown = set(self.perturbations) - set(PERTURBATIONS)
        if unknown or not self.perturbations or min(self.perturbations.values()) < 0:
            raise ValueError(f"perturbations: kinds from {sorted(PERTURBATIONS)} with weights >= 0, got {self.perturbations}")
        if not self.relax_segments or min(self.relax_segments) < 1:
            raise ValueError(f"relax_segments must be positive step counts, got {self.relax_segments}")
        self.relax_segments = tuple(int(s) for s in self.relax_segments)
        self.md_temperature = (float(self.md_temperature[0]), float(self.md_temperature[1]))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``campaign.json``)."""
        return dataclasses.asdict(self)


# ============================================================================ system pools
@dataclass(frozen=True)
class SurfaceSpec:
    """A surface the loop can build: a plan surface (``metal``, ``facet``; supercell drawn per system)
    or a user's slab (``slab``: a clean slab, its FixAtoms constraints kept; sites from pymatgen)."""

    name: str
    metal: str = ""
    facet: str = ""
    slab: Atoms | None = field(default=None, compare=False, hash=False, repr=False)

    def build(self, rng: np.random.Generator, cfg: ALConfig) -> tuple[Atoms, str]:
        """A fresh clean slab and the name of its supercell."""
        if self.slab is not None:
            slab = self.slab.copy()
            slab.calc = None
            return slab, "user"
        cells = SLAB_CELLS[self.facet]
        cell = cells[int(rng.integers(len(cells)))]
        a = cfg.lattice.get(self.metal)
        if a is None or rng.random() < cfg.ase_lattice_fraction:
            a = ase_lattice_constant(self.metal)
        return build_slab(self.metal, self.facet, cell, a=a), "x".join(map(str, cell))

    def sites(self, slab: Atoms, site: str, rng: np.random.Generator) -> np.ndarray:
        """Lateral position of one instance of site kind ``site`` (``random``: anywhere) on ``slab``."""
        if site == RANDOM_SITE:
            return rng.uniform(0.0, 1.0, size=2) @ slab.cell.array[:2, :2]
        if self.slab is None:
            points = site_positions(slab, self.facet, site)
        else:
            points = [s.position[:2] for s in find_sites(slab) if s.kind == site]
        if not points:
            raise ValueError(f"surface {self.name} has no {site!r} site")
        return np.asarray(points[int(rng.integers(len(points)))], dtype=float)

    def site_kinds(self) -> tuple[str, ...]:
        """The named site kinds of this surface."""
        if self.slab is None:
            return FACET_SITES[self.facet]
        return tuple(sorted({s.kind for s in find_sites(self.slab)}))


@dataclass(frozen=True)
class Group:
    """One (surface, adsorbate, site kind); adsorbate ``none`` is a clean slab."""

    surface: str
    adsorbate: str
    site: str

    @property
    def key(self) -> str:
        return f"{self.surface}|{self.adsorbate}|{self.site}"


@dataclass
class SystemPool:
    """What exploration draws from: surfaces and the groups of each, minus held-out groups."""

    surfaces: dict[str, SurfaceSpec]
    groups: list[Group]
    heldout: list[Group] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("the system pool is empty: no (surface, adsorbate, site) group left to explore")


def plan_pool(
    metals: Sequence[str] = TEACHER_METALS,
    facets: Sequence[str] = FACETS,
    adsorbates: Sequence[str] | None = None,
    sites: bool = True,
    exclude: set[tuple[str, str, str, str]] | None = None,
    exclude_pairs: set[tuple[str, str]] | None = None,
    heldout_per_group: int = 0,
    seed: int = 0,
) -> SystemPool:
    """Every (metal, facet, adsorbate, site kind incl. ``random``) of the plan, minus ``exclude``d
    (metal, facet, adsorbate, site) groups and ``exclude_pairs`` (metal, adsorbate). With
    ``heldout_per_group`` k > 0, k named site kinds of every (metal, facet, adsorbate) are held out
    (drawn from ``seed``) for :func:`heldout_evaluation` and never explored."""
    adsorbates = list(ADSORBATES) if adsorbates is None else list(adsorbates)
    bad = [a for a in adsorbates if a not in ADSORBATES]
    if bad:
        raise ValueError(f"unknown adsorbate(s) {bad}; known: {sorted(ADSORBATES)}")
    bad = [f for f in facets if f not in FACETS]
    if bad:
        raise ValueError(f"unknown facet(s) {bad}; known: {list(FACETS)}")
    bad = [m for m in metals if m not in TEACHER_METALS]
    if bad:
        raise ValueError(f"unknown metal(s) {bad}; known: {list(TEACHER_METALS)}")
    exclude = exclude or set()
    exclude_pairs = exclude_pairs or set()
    surfaces = {f"{m}-{f}": SurfaceSpec(f"{m}-{f}", metal=m, facet=f) for m in metals for f in facets}
    groups, heldout = [], []
    rng = np.random.default_rng([seed, 7])
    for m in metals:
        for f in facets:
            for a in adsorbates:
                if (m, a) in exclude_pairs:
                    continue
                kinds = [s for s in FACET_SITES[f] if (m, f, a, s) not in exclude]
                n_held = min(heldout_per_group, len(kinds) - 1)
                held = set(rng.choice(kinds, size=n_held, replace=False)) if n_held > 0 else set()
                for s in kinds:
                    (heldout if s in held else groups).append(Group(f"{m}-{f}", a, s))
                if sites and (m, f, a, RANDOM_SITE) not in exclude:
                    groups.append(Group(f"{m}-{f}", a, RANDOM_SITE))
    return SystemPool(surfaces, groups, heldout)


def file_pool(
    slabs: Sequence[tuple[str, Atoms]], adsorbates: Sequence[str], heldout_per_group: int = 1, seed: int = 0
) -> SystemPool:
    """A pool over the user's clean slabs (name, Atoms): every symmetry-distinct site kind of each
    (pymatgen), every adsorbate, ``heldout_per_group`` site kinds per (slab, adsorbate) held out. A slab
    without FixAtoms gets its bottom half fixed (as data generation's slabs)."""
    from ..surfaces import bottom_fixed_mask

    if not slabs:
        raise ValueError("no slabs given")
    bad = [a for a in adsorbates if a not in ADSORBATES]
    if bad:
        raise ValueError(f"unknown adsorbate(s) {bad}; known: {sorted(ADSORBATES)}")
    surfaces: dict[str, SurfaceSpec] = {}
    for name, slab in slabs:
        slab = slab.copy()
        slab.calc = None
        if not fixed_mask(slab).any():
            z = slab.positions[:, 2]
            slab.set_constraint(FixAtoms(mask=bottom_fixed_mask(slab, fix_below=0.5 * (z.min() + z.max()) - 0.1)))
        slab.set_tags(np.where(fixed_mask(slab), 0, 1))
        surfaces[name] = SurfaceSpec(name, metal=_majority_metal(slab), slab=slab)
    groups, heldout = [], []
    rng = np.random.default_rng([seed, 7])
    for name, spec in surfaces.items():
        kinds = list(spec.site_kinds())
        for a in adsorbates:
            held = set(rng.choice(kinds, size=min(heldout_per_group, len(kinds) - 1), replace=False)) if len(kinds) > 1 else set()
            for s in kinds:
                (heldout if s in held else groups).append(Group(name, a, s))
            groups.append(Group(name, a, RANDOM_SITE))
    return SystemPool(surfaces, groups, heldout)


def _majority_metal(atoms: Atoms) -> str:
    symbols = Counter(atoms.get_chemical_symbols())
    return symbols.most_common(1)[0][0]


def excluded_groups(data_dir: str | Path) -> tuple[set[tuple[str, str, str, str]], set[tuple[str, str]]]:
    """The (metal, facet, adsorbate, site) groups a datagen folder keeps out of training (its test_id /
    test_ood adsorbate frames and relaxation references) and its test_ood (metal, adsorbate) pairs, so
    that exploration never trains on the benchmark."""
    data_dir = Path(data_dir)
    groups: set[tuple[str, str, str, str]] = set()
    pairs: set[tuple[str, str]] = set()
    tasks = data_dir / "relax_tasks.json"
    if tasks.is_file():
        for r in json.loads(tasks.read_text()):
            groups.add((r["metal"], r["facet"], r["adsorbate"], r["site"]))
    summary = data_dir / "summary.json"
    if summary.is_file():
        for m, a in json.loads(summary.read_text()).get("test_ood_combos", []):
            pairs.add((m, a))
    for split in ("test_id", "test_ood"):
        for path in (data_dir / f"{split}.extxyz.xz", data_dir / f"{split}.extxyz"):
            if path.is_file():
                for atoms in read_frames(path):
                    info = atoms.info
                    if info.get("config_type") == "adsorbate":
                        groups.add((str(info["metal"]), str(info["facet"]), str(info["adsorbate"]), str(info["site"])))
                break
    return groups, pairs


# ============================================================================ files
def read_frames(path: str | Path) -> list[Atoms]:
    """Every frame of an extxyz file (``.xz`` compressed or not)."""
    path = Path(path)
    if path.suffix == ".xz":
        with lzma.open(path, "rt") as fh:
            return list(ase_read(fh, ":", format="extxyz"))
    return list(ase_read(str(path), ":", format="extxyz"))


def write_frames(frames: Sequence[Atoms], path: str | Path) -> Path:
    """Write ``frames`` as xz-compressed extxyz, atomically (an empty list writes an empty file)."""
    buffer = io.StringIO()
    if frames:
        ase_write(buffer, list(frames), format="extxyz")
    with atomic_path(path) as tmp:
        with lzma.open(tmp, "wt") as fh:
            fh.write(buffer.getvalue())
    return Path(path)


def _labelled(atoms: Atoms, energy: float, forces: np.ndarray, **info: Any) -> Atoms:
    frame = atoms.copy()
    frame.info.update(info)
    frame.calc = SinglePointCalculator(frame, energy=float(energy), forces=np.asarray(forces, dtype=float))
    return frame


# ============================================================================ geometry
def max_displacement(a: Atoms, b: Atoms, free_only: bool = True) -> float:
    """Largest minimum-image displacement (A) between two structures of the same atoms (free atoms only:
    those not held by FixAtoms or a ``fixed`` array)."""
    if len(a) != len(b):
        raise ValueError(f"structures differ in size ({len(a)} and {len(b)} atoms)")
    mask = np.ones(len(a), dtype=bool)
    if free_only:
        held = a.arrays["fixed"].astype(bool) if "fixed" in a.arrays else fixed_mask(a)
        mask = ~held
    if not mask.any():
        return 0.0
    vectors, lengths = find_mic(b.positions[mask] - a.positions[mask], a.cell, a.pbc)
    return float(lengths.max())


def _free(atoms: Atoms) -> np.ndarray:
    held = atoms.arrays["fixed"].astype(bool) if "fixed" in atoms.arrays else fixed_mask(atoms)
    return ~held


def _top_layer(slab: Atoms) -> np.ndarray:
    z = slab.positions[:, 2]
    return np.flatnonzero((z > z.max() - 0.5) & ~fixed_mask(slab))


def _perturb_slab(slab: Atoms, kind: str, rng: np.random.Generator, metal: str) -> Atoms:
    """A clean slab with a vacancy, an adatom or one displaced surface atom (``rattle``/``none``: as is)."""
    top = _top_layer(slab)
    if kind == "vacancy" and len(top) > 1:
        keep = np.ones(len(slab), dtype=bool)
        keep[int(rng.choice(top))] = False
        out = slab[keep]
        out.set_constraint(FixAtoms(mask=fixed_mask(slab)[keep]))
        out.info = dict(slab.info)
        return out
    if kind == "adatom":
        nn = float(np.sort(np.linalg.norm(find_mic(slab.positions[top[1:]] - slab.positions[top[0]], slab.cell,
                                                   slab.pbc)[0], axis=1))[0]) if len(top) > 1 else 2.6
        xy = rng.uniform(0.0, 1.0, size=2) @ slab.cell.array[:2, :2]
        out = attach(slab, Atoms(metal, positions=[[0.0, 0.0, 0.0]]), xy, nn)
        tags = out.get_tags()
        tags[-1] = 1  # a surface atom, not an adsorbate
        out.set_tags(tags)
        return out
    if kind == "displaced" and len(top):
        out = slab.copy()
        i = int(rng.choice(top))
        angle = rng.uniform(0.0, 2 * np.pi)
        length = rng.uniform(0.6, 1.6)
        out.positions[i] += (length * np.cos(angle), length * np.sin(angle), rng.uniform(0.0, 0.5))
        return out
    return slab


def _rattle_free(atoms: Atoms, rng: np.random.Generator, sigma: float) -> None:
    free = ~fixed_mask(atoms)
    atoms.positions[free] += rng.normal(0.0, sigma, size=(int(free.sum()), 3))


# ============================================================================ the loop
class _Round:
    """Files and phase bookkeeping of one round folder."""

    def __init__(self, out: Path, number: int) -> None:
        self.number = number
        self.dir = out / f"round{number}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.record_path = self.dir / "round.json"
        self.record: dict[str, Any] = (
            json.loads(self.record_path.read_text()) if self.record_path.is_file() else {"round": number, "phases": {}}
        )

    def done(self, phase: str) -> bool:
        return phase in self.record["phases"]

    def finish(self, phase: str, stats: dict[str, Any]) -> None:
        self.record["phases"][phase] = stats
        write_json(self.record, self.record_path)

    def path(self, name: str) -> Path:
        return self.dir / name


def _student(checkpoint: str | Path) -> Any:
    """The student's calculator (float32, the default settings) for a checkpoint path."""
    from ._common import resolve_calculator

    return resolve_calculator(str(checkpoint))


def _starting_structures(cfg: ALConfig, pool: SystemPool, rnd: int, previous_minima: list[Atoms]) -> list[Atoms]:
    """The round's starting structures (deterministic in (seed, round))."""
    rng = np.random.default_rng([cfg.seed, rnd, 11])
    kinds = sorted(cfg.perturbations)
    weights = np.array([cfg.perturbations[k] for k in kinds], dtype=float)
    weights /= weights.sum()
    with_ads = [g for g in pool.groups if g.adsorbate != "none"]
    surfaces = sorted(pool.surfaces)
    n_prev = min(len(previous_minima), cfg.explore_systems // 5)
    starts: list[Atoms] = []
    for k in range(cfg.explore_systems - n_prev):
        sys_rng = np.random.default_rng([cfg.seed, rnd, 13, k])
        clean = sys_rng.random() < cfg.clean_fraction or not with_ads
        group = (
            Group(surfaces[int(sys_rng.integers(len(surfaces)))], "none", "none") if clean
            else with_ads[int(sys_rng.integers(len(with_ads)))]
        )
        spec = pool.surfaces[group.surface]
        kind = str(kinds[int(sys_rng.choice(len(kinds), p=weights))])
        slab, cell = spec.build(sys_rng, cfg)
        xy = spec.sites(slab, group.site, sys_rng) if not clean else None
        slab = _perturb_slab(slab, kind, sys_rng, spec.metal)
        if clean:
            atoms = slab
        else:
            atoms = place_adsorbate(slab, group.adsorbate, xy, sys_rng)
        if kind == "rattle":
            _rattle_free(atoms, sys_rng, float(sys_rng.uniform(0.05, 0.25)))
        atoms.info = {
            "system_id": f"r{rnd}-s{k}", "surface": group.surface, "metal": spec.metal, "facet": spec.facet or "user",
            "adsorbate": group.adsorbate, "site": group.site, "cell_size": cell, "perturbation": kind, "round": rnd,
        }
        starts.append(atoms)
    for j, idx in enumerate(rng.permutation(len(previous_minima))[:n_prev]):
        atoms = constrain_held(previous_minima[int(idx)])
        _rattle_free(atoms, rng, 0.1)
        atoms.info = {**previous_minima[int(idx)].info, "system_id": f"r{rnd}-m{j}", "perturbation": "student_minimum",
                      "round": rnd}
        for key in ("student_energy", "frame_kind", "step", "anomalies", "energy_drop_per_atom", "temperature_K"):
            atoms.info.pop(key, None)
        atoms.arrays.pop("student_forces", None)
        starts.append(atoms)
    for atoms in starts:
        atoms.arrays["fixed"] = fixed_mask(atoms)
    return starts


def _explore(cfg: ALConfig, rd: _Round, checkpoint: str, starts: list[Atoms], progress: bool) -> dict[str, Any]:
    """Student relaxations in segments and short MD; writes ``candidates.extxyz.xz``."""
    from .batch import relax_batch
    from .md import run_md

    calc = _student(checkpoint)
    t0 = time.perf_counter()
    candidates: list[Atoms] = []

    def keep(atoms: Atoms, energy: float, forces: np.ndarray, kind: str, step: int, base: Atoms) -> Atoms:
        frame = atoms.copy()
        frame.calc = None
        frame.info = {**base.info, "frame_kind": kind, "step": int(step), "student_energy": float(energy)}
        frame.arrays["student_forces"] = np.asarray(forces, dtype=float)
        if "fixed" not in frame.arrays:
            frame.new_array("fixed", fixed_mask(frame))
        candidates.append(frame)
        return frame

    # starting frames: one batched single point
    first = calc.predictor.predict([constrain_held(a) for a in starts], properties=("energy", "forces"))
    for atoms, res in zip(starts, first, strict=True):
        keep(constrain_held(atoms), res["energy"], res["forces"], "start", 0, atoms)
    current = [constrain_held(a) for a in starts]
    steps_done = [0] * len(starts)
    active = list(range(len(starts)))
    errors: dict[int, str] = {}
    for seg, n in enumerate(tqdm(cfg.relax_segments, desc="explore: student relaxation", disable=not progress)):
        if not active:
            break
        results = relax_batch([current[i] for i in active], fmax=cfg.fmax, steps=n, optimizer="FIRE", calculator=calc,
                              progress=False, invalid="record")
        still = []
        for i, res in zip(active, results, strict=True):
            if res.error is not None:
                errors[i] = res.error
                continue
            steps_done[i] += res.nsteps
            final = constrain_held(res.atoms)
            last = seg == len(cfg.relax_segments) - 1
            kind = "minimum" if res.converged or last else "relax"
            keep(final, res.final_energy, res.atoms.get_forces(apply_constraint=False), kind, steps_done[i], starts[i])
            current[i] = final
            if not res.converged and not last:
                still.append(i)
        active = still
    minima: dict[int, Atoms] = {}
    first_of: dict[str, Atoms] = {}
    last_of: dict[str, Atoms] = {}
    for frame in candidates:
        first_of.setdefault(frame.info["system_id"], frame)
        last_of[frame.info["system_id"]] = frame
    drops = []
    for i, atoms in enumerate(starts):
        sid = atoms.info["system_id"]
        if i in errors:
            continue
        end = last_of[sid]  # the last kept frame of a system is its (possibly unconverged) minimum
        end.info["frame_kind"] = "minimum"
        has_ads = bool((atoms.get_tags() == 2).any())
        flags = check_relaxation(end, initial=atoms)["anomalies"] if has_ads else []
        if not has_ads and max_displacement(atoms, end) > 1.0:
            flags = ["surface_changed"]
        drop = (end.info["student_energy"] - first_of[sid].info["student_energy"]) / len(atoms)
        end.info["anomalies"] = ",".join(flags) or "none"
        end.info["energy_drop_per_atom"] = float(drop)
        drops.append(drop)
        minima[i] = end
    # short MD from some minima
    rng = np.random.default_rng([cfg.seed, rd.number, 17])
    md_from = [int(i) for i in rng.permutation(sorted(minima))[: cfg.md_systems]]
    stride = max(1, cfg.md_steps // max(1, cfg.md_frames))
    md_errors = 0
    for i in tqdm(md_from, desc="explore: student MD", disable=not progress):
        start = constrain_held(minima[i])
        temperature = float(rng.uniform(*cfg.md_temperature))
        traj = rd.path("md_tmp.traj")
        try:
            run_md(start, ensemble="nvt", temperature=temperature, timestep=1.0, steps=cfg.md_steps, friction=0.02,
                   trajectory=traj, log_interval=stride, seed=int(rng.integers(1 << 31)), calculator=calc,
                   progress=False)
            frames = ase_read(str(traj), ":")[1:]
        except Exception as exc:  # noqa: BLE001 - a student MD that blows up is recorded, not fatal
            log.warning("student MD of %s stopped: %s: %s", starts[i].info["system_id"], type(exc).__name__, exc)
            md_errors += 1
            frames = []
        finally:
            traj.unlink(missing_ok=True)
        for k, frame in enumerate(frames[: cfg.md_frames]):
            frame.info = {}
            frame.set_constraint(FixAtoms(mask=starts[i].arrays["fixed"]))
            frame.new_array("fixed", starts[i].arrays["fixed"].copy())
            res = calc.predictor.predict([frame], properties=("energy", "forces"))[0]
            keep(frame, res["energy"], res["forces"], "md", (k + 1) * stride, starts[i])
            candidates[-1].info["temperature_K"] = round(temperature, 1)
    write_frames(candidates, rd.path("candidates.extxyz.xz"))
    anomalies = Counter(m.info["anomalies"] for m in minima.values())
    return {
        "n_starts": len(starts),
        "perturbations": dict(Counter(a.info["perturbation"] for a in starts)),
        "n_candidates": len(candidates),
        "candidates_by_kind": dict(Counter(c.info["frame_kind"] for c in candidates)),
        "relax_failed": len(errors),
        "md_failed": md_errors,
        "minima_anomalies": dict(anomalies),
        "energy_drop_per_atom_median": float(np.median(drops)) if drops else None,
        "wall_s": time.perf_counter() - t0,
    }


def _prefilter(cfg: ALConfig, candidates: list[Atoms]) -> tuple[list[int], dict[str, Any]]:
    """Indices of the candidates the teacher labels (at most ``teacher_calls``), see the module docstring."""
    by_system: dict[str, list[int]] = defaultdict(list)
    for i, frame in enumerate(candidates):
        by_system[str(frame.info["system_id"])].append(i)
    kept: dict[str, list[int]] = {}
    duplicates = 0
    for sid, members in by_system.items():
        chosen: list[int] = []
        # minima first, then the rest in order
        for i in sorted(members, key=lambda j: (candidates[j].info["frame_kind"] != "minimum", j)):
            if any(max_displacement(candidates[i], candidates[j]) < cfg.dedupe_tol for j in chosen):
                duplicates += 1
                continue
            chosen.append(i)
        kept[sid] = chosen

    def priority(sid: str) -> tuple[float, str]:
        minimum = next((candidates[i] for i in by_system[sid] if candidates[i].info["frame_kind"] == "minimum"), None)
        if minimum is None:
            return (0.0, sid)
        flagged = minimum.info.get("anomalies", "none") != "none"
        drop = float(minimum.info.get("energy_drop_per_atom", 0.0))
        return (-(10.0 * flagged + max(0.0, -drop) / 0.05), sid)

    order = sorted(kept, key=priority)
    picked: list[int] = []
    depth = 0
    while len(picked) < cfg.teacher_calls and any(depth < len(kept[s]) for s in order):
        for sid in order:
            if depth < len(kept[sid]) and len(picked) < cfg.teacher_calls:
                picked.append(kept[sid][depth])
        depth += 1
    stats = {"n_candidates": len(candidates), "duplicates_dropped": duplicates,
             "n_after_dedupe": sum(len(v) for v in kept.values()), "n_to_teacher": len(picked),
             "flagged_systems": sum(1 for s in order if priority(s)[0] <= -10.0)}
    return sorted(picked), stats


def frame_errors(frame: Atoms, student_energy: float, student_forces: np.ndarray) -> dict[str, float]:
    """Student-teacher disagreement on one teacher-labelled frame: per-atom energy error, force-component
    MAE and max force-vector error over free atoms, and the selection score."""
    e_t = float(frame.get_potential_energy())
    f_t = np.asarray(frame.get_forces(apply_constraint=False))
    free = _free(frame)
    if not free.any():
        free = np.ones(len(frame), dtype=bool)
    de = (student_energy - e_t) / len(frame)
    df = np.asarray(student_forces)[free] - f_t[free]
    f_mae = float(np.abs(df).mean())
    return {"de_atom": float(de), "f_mae": f_mae, "f_max": float(np.linalg.norm(df, axis=1).max()),
            "score": abs(de) / E_UNIT + f_mae / F_UNIT}


def _teacher_label(atoms: Atoms, calc: JournaledCalculator) -> Atoms:
    work = atoms.copy()
    work.calc = calc
    energy = float(work.get_potential_energy())
    forces = np.array(work.get_forces(apply_constraint=False))
    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
    return frame


def _label(cfg: ALConfig, rd: _Round, checkpoint: str, candidates: list[Atoms], picked: list[int],
           progress: bool) -> dict[str, Any]:
    """Teacher single points on ``picked`` and short teacher relaxations from the worst student minima;
    writes ``labelled.extxyz.xz`` (every labelled frame with its student-teacher errors)."""
    from ase.optimize import BFGS

    labeller = resolve_labeller(cfg.teacher)
    symbols = {s for c in candidates for s in c.get_chemical_symbols()}
    labeller.check_elements(symbols)
    journal = LabelJournal(rd.path("teacher_journal.jsonl"))
    stats = LabelStats()
    calc = JournaledCalculator(labeller, stats, journal)
    t0 = time.perf_counter()
    labelled: list[Atoms] = []
    try:
        for i in tqdm(picked, desc="label: teacher single points", disable=not progress):
            cand = candidates[i]
            frame = _teacher_label(cand, calc)
            errors = frame_errors(frame, float(cand.info["student_energy"]), cand.arrays["student_forces"])
            frame.info.update({k: v for k, v in cand.info.items()}, **errors)
            labelled.append(frame)
        # the teacher's verdict on the student's minima: a few teacher steps from the worst ones
        minima = [f for f in labelled if f.info["frame_kind"] == "minimum"]
        minima.sort(key=lambda f: -f.info["score"])
        student = _student(checkpoint) if minima and cfg.teacher_relax_steps > 0 else None
        for frame in tqdm(minima[: cfg.teacher_relax_systems], desc="label: teacher steps from student minima",
                          disable=not progress):
            work = constrain_held(frame)
            work.calc = calc
            path: list[Atoms] = []
            opt = BFGS(work, logfile=None)

            def snap(work: Atoms = work, path: list[Atoms] = path) -> None:
                path.append(work.copy())

            opt.attach(snap, interval=1)
            opt.run(fmax=cfg.fmax, steps=cfg.teacher_relax_steps)
            for k, atoms in enumerate(path[1:], start=1):
                atoms.calc = None
                teacher_frame = _teacher_label(atoms, calc)
                res = student.predictor.predict([atoms], properties=("energy", "forces"))[0]
                errors = frame_errors(teacher_frame, float(res["energy"]), res["forces"])
                teacher_frame.info.update({kk: v for kk, v in frame.info.items() if kk not in errors},
                                          frame_kind="teacher_path", step=k, **errors)
                teacher_frame.info["student_energy"] = float(res["energy"])
                teacher_frame.arrays["student_forces"] = np.asarray(res["forces"], dtype=float)
                labelled.append(teacher_frame)
    finally:
        journal.close()
    write_frames(labelled, rd.path("labelled.extxyz.xz"))
    return {"teacher": labeller.name, "teacher_version": labeller.version, "n_labelled": len(labelled),
            "teacher_calls": stats.calls, "replayed_calls": stats.replayed, "teacher_seconds": stats.seconds,
            "wall_s": time.perf_counter() - t0}


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not len(values):
        return None
    q = np.quantile(np.asarray(values, dtype=float), [0.1, 0.5, 0.9, 1.0])
    return {"p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]), "max": float(q[3]),
            "mean": float(np.mean(values))}


def _select(cfg: ALConfig, rd: _Round, labelled: list[Atoms]) -> dict[str, Any]:
    """Choose the round's new frames (see the module docstring); writes frames / val files."""
    pathology: Counter = Counter()
    ok = []
    for frame in labelled:
        reason = _pathology(frame)
        if reason:
            pathology[reason] += 1
        else:
            ok.append(frame)
    above = sorted((f for f in ok if f.info["score"] > cfg.min_score), key=lambda f: -f.info["score"])
    chosen = above[: cfg.max_new_frames]
    systems = sorted({str(f.info["system_id"]) for f in chosen})
    rng = np.random.default_rng([cfg.seed, rd.number, 19])
    n_val = int(round(cfg.val_fraction * len(systems)))
    val_systems = set(rng.permutation(systems)[:n_val].tolist()) if n_val else set()
    train_frames, val_frames = [], []
    for f in chosen:
        f.info["split"] = "val" if f.info["system_id"] in val_systems else "train"
        f.info["config_type"] = "adsorbate" if f.info.get("adsorbate", "none") != "none" else "slab"
        (val_frames if f.info["split"] == "val" else train_frames).append(f)
    write_frames(train_frames, rd.path("frames.extxyz.xz"))
    write_frames(val_frames, rd.path("val.extxyz.xz"))

    def by(key: str, frames: Sequence[Atoms]) -> dict[str, int]:
        return dict(sorted(Counter(str(f.info.get(key)) for f in frames).items()))

    stats = {
        "n_labelled": len(labelled),
        "pathological": dict(pathology),
        "n_above_threshold": len(above),
        "n_selected": len(chosen),
        "n_train": len(train_frames),
        "n_val": len(val_frames),
        "min_score": cfg.min_score,
        "errors_all": {k: _quantiles([abs(f.info[k]) for f in ok]) for k in ("de_atom", "f_mae", "f_max", "score")},
        "errors_selected": {k: _quantiles([abs(f.info[k]) for f in chosen]) for k in ("de_atom", "f_mae", "score")},
        "errors_by_kind": {
            kind: {"n": len(fs), "de_atom_mae": float(np.mean([abs(f.info["de_atom"]) for f in fs])),
                   "f_mae": float(np.mean([f.info["f_mae"] for f in fs]))}
            for kind, fs in _group_by(ok, "frame_kind").items()
        },
        "errors_by_perturbation": {
            kind: {"n": len(fs), "de_atom_mae": float(np.mean([abs(f.info["de_atom"]) for f in fs])),
                   "f_mae": float(np.mean([f.info["f_mae"] for f in fs]))}
            for kind, fs in _group_by(ok, "perturbation").items()
        },
        "selected_by_kind": by("frame_kind", chosen),
        "selected_by_metal": by("metal", chosen),
        "selected_by_facet": by("facet", chosen),
        "selected_by_adsorbate": by("adsorbate", chosen),
        "selected_by_perturbation": by("perturbation", chosen),
    }
    write_json(stats, rd.path("selection.json"))
    return {k: stats[k] for k in ("n_labelled", "n_above_threshold", "n_selected", "n_train", "n_val", "pathological")}


def _group_by(frames: Sequence[Atoms], key: str) -> dict[str, list[Atoms]]:
    out: dict[str, list[Atoms]] = defaultdict(list)
    for f in frames:
        out[str(f.info.get(key))].append(f)
    return dict(sorted(out.items()))


def _train_config(cfg: ALConfig, rd: _Round, init: str, out: Path) -> dict[str, Any]:
    """The trainer's fields for this round: the init checkpoint's recorded recipe, then ours."""
    from ..checkpoint import read_metadata

    meta = read_metadata(init)
    recorded = dict((meta.get("training") or {}).get("config") or {})
    keep = ("batch_size", "weight_decay", "energy_weight", "force_weight", "stress_weight", "ema_decay", "grad_clip",
            "energy_key", "forces_key", "stress_key", "dtype", "device")
    config: dict[str, Any] = {k: recorded[k] for k in keep if k in recorded}
    rounds = sorted(int(p.name[5:]) for p in out.glob("round*") if p.name[5:].isdigit())
    new_train = [str(out / f"round{r}" / "frames.extxyz.xz") for r in rounds if r <= rd.number
                 and (out / f"round{r}" / "frames.extxyz.xz").is_file()]
    new_val = [str(out / f"round{r}" / "val.extxyz.xz") for r in rounds if r <= rd.number
               and (out / f"round{r}" / "val.extxyz.xz").is_file()]
    new_train = [p for p in new_train if read_frames(p)]
    new_val = [p for p in new_val if read_frames(p)]
    train_files = [*cfg.base_train, *new_train]
    val_files = [*cfg.base_val, *new_val] or new_train[-1:]
    if not train_files:
        raise ValueError("nothing to train on: no base data and no selected frames")
    config.update(
        train=train_files, val=val_files, out=str(rd.dir), init_from=str(init), cutoff=float(meta["config"]["cutoff"]),
        elements=list(meta["config"]["elements"]), seed=cfg.seed + rd.number, max_steps=cfg.train_steps, lr=cfg.lr,
        warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio, time_limit_s=cfg.time_limit_s,
        threads=cfg.threads, val_every=min(500, max(1, cfg.train_steps // 4)), max_val=400,
    )
    config.update(cfg.train_overrides)
    return config


def run_active_learning(
    cfg: ALConfig,
    pool: SystemPool,
    train_fn: TrainFn,
    progress: bool = True,
    evaluate: bool = False,
    stop_after: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the campaign's rounds; returns ``campaign.json``'s content.

    ``train_fn(config_dict)`` trains (resumably) with trainer fields (``train``, ``val``, ``out``,
    ``init_from``, ``max_steps``, ...) and returns its summary (``stop_reason``). ``evaluate``: held-out
    relaxations (:func:`heldout_evaluation` on ``pool.heldout``) before the first round and after each.
    ``stop_after`` (a phase name) returns after that phase of the current round (tests, debugging).
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    campaign_path = out / "campaign.json"
    campaign: dict[str, Any] = json.loads(campaign_path.read_text()) if campaign_path.is_file() else {}
    campaign.update(config=cfg.to_dict(), pool={"surfaces": sorted(pool.surfaces), "n_groups": len(pool.groups),
                                               "heldout": [g.key for g in pool.heldout]})
    campaign.setdefault("rounds", {})
    write_json(campaign, campaign_path)
    labeller_name = cfg.teacher

    if evaluate and pool.heldout and "heldout_start" not in campaign:
        campaign["heldout_start"] = heldout_evaluation(cfg.init, pool, labeller_name, out / "heldout", cfg, progress)
        write_json(campaign, campaign_path)

    init = cfg.init
    for number in range(cfg.first_round, cfg.first_round + cfg.rounds):
        rd = _Round(out, number)
        if number > cfg.first_round:
            init = str(out / f"round{number - 1}" / "best.safetensors")
        previous = out / f"round{number - 1}" / "candidates.extxyz.xz"
        previous_minima = [c for c in read_frames(previous) if c.info.get("frame_kind") == "minimum"
                           and c.info.get("anomalies", "none") == "none"] if previous.is_file() else []
        log.info("round %d (student %s): %s", number, init, ", ".join(rd.record["phases"]) or "starting")
        if rd.done("train") and (rd.done("evaluate") or not (evaluate and pool.heldout)):
            campaign["rounds"][str(number)] = rd.record  # a finished round: ``stop_after`` is about the next one
            continue
        if not rd.done("explore"):
            starts = _starting_structures(cfg, pool, number, previous_minima)
            write_frames(starts, rd.path("starts.extxyz.xz"))
            rd.finish("explore", _explore(cfg, rd, init, starts, progress))
        if stop_after == "explore":
            return campaign
        candidates = read_frames(rd.path("candidates.extxyz.xz"))
        if not rd.done("label"):
            picked, pre = _prefilter(cfg, candidates)
            stats = _label(cfg, rd, init, candidates, picked, progress)
            rd.finish("label", {**pre, **stats})
        if stop_after == "label":
            return campaign
        if not rd.done("select"):
            rd.finish("select", _select(cfg, rd, read_frames(rd.path("labelled.extxyz.xz"))))
        if stop_after == "select":
            return campaign
        if not rd.done("train"):
            config = _train_config(cfg, rd, init, out)
            write_json(config, rd.path("train_config.json"))
            summary = train_fn(config)
            if summary.get("stop_reason") != "max_steps":
                log.info("round %d: training stopped (%s) at step %s; rerun the same command to continue",
                         number, summary.get("stop_reason"), summary.get("steps"))
                campaign["rounds"][str(number)] = rd.record
                write_json(campaign, campaign_path)
                return campaign
            rd.finish("train", {"summary": summary, "train_files": config["train"], "val_files": config["val"]})
        if evaluate and pool.heldout and not rd.done("evaluate"):
            rd.finish("evaluate", heldout_evaluation(str(rd.path("best.safetensors")), pool, labeller_name,
                                                     out / "heldout", cfg, progress))
        campaign["rounds"][str(number)] = rd.record
        write_json(campaign, campaign_path)
    campaign["final_checkpoint"] = str(out / f"round{cfg.first_round + cfg.rounds - 1}" / "best.safetensors")
    write_json(campaign, campaign_path)
    return campaign


# ============================================================================ held-out relaxations
def _heldout_structures(pool: SystemPool, cfg: ALConfig) -> tuple[list[Atoms], list[Atoms]]:
    """One initial structure per held-out group, and its clean slab (deterministic in the seed)."""
    systems, slabs = [], []
    for k, group in enumerate(pool.heldout):
        rng = np.random.default_rng([cfg.seed, 23, k])
        spec = pool.surfaces[group.surface]
        slab, cell = spec.build(rng, dataclasses.replace(cfg, ase_lattice_fraction=0.0))
        xy = spec.sites(slab, group.site, rng)
        atoms = place_adsorbate(slab, group.adsorbate, xy, rng)
        atoms.info = {"group": group.key, "cell_size": cell}
        systems.append(atoms)
        slabs.append(slab)
    return systems, slabs


def heldout_evaluation(
    checkpoint: str, pool: SystemPool, teacher: str, folder: Path, cfg: ALConfig, progress: bool = True
) -> dict[str, Any]:
    """Relaxed adsorption energies ``E(slab+ads) - E(clean slab)`` of the held-out groups by the student
    (``checkpoint``) against the teacher's own relaxations of the same initial structures (computed once
    into ``folder``, journalled). Returns the MAE, per-system numbers and the student's anomalies."""
    from .batch import relax_batch
    from .relax import relax

    folder.mkdir(parents=True, exist_ok=True)
    systems, slabs = _heldout_structures(pool, cfg)
    ref_path = folder / "reference.json"
    if ref_path.is_file():
        reference = json.loads(ref_path.read_text())
    else:
        labeller = resolve_labeller(teacher)
        journal = LabelJournal(folder / "teacher_journal.jsonl")
        calc = JournaledCalculator(labeller, LabelStats(), journal)
        reference = {"teacher": labeller.name, "systems": []}
        try:
            for atoms, slab in tqdm(list(zip(systems, slabs, strict=True)), desc="held-out: teacher relaxations",
                                    disable=not progress):
                r_sys = relax(atoms, calculator=calc, fmax=cfg.fmax, steps=300, optimizer="BFGS")
                r_slab = relax(slab, calculator=calc, fmax=cfg.fmax, steps=300, optimizer="BFGS")
                reference["systems"].append({
                    "group": atoms.info["group"], "e_ads": r_sys.final_energy - r_slab.final_energy,
                    "converged": bool(r_sys.converged and r_slab.converged),
                    "anomalies": check_relaxation(r_sys.atoms, initial=atoms)["anomalies"],
                })
        finally:
            journal.close()
        write_json(reference, ref_path)
    calc = _student(checkpoint)
    r_sys = relax_batch(systems, fmax=cfg.fmax, steps=300, optimizer="BFGS", calculator=calc, progress=False,
                        invalid="record")
    r_slab = relax_batch(slabs, fmax=cfg.fmax, steps=300, optimizer="BFGS", calculator=calc, progress=False,
                         invalid="record")
    rows = []
    for atoms, a, b, ref in zip(systems, r_sys, r_slab, reference["systems"], strict=True):
        row: dict[str, Any] = {"group": ref["group"], "e_ads_ref": ref["e_ads"], "ref_anomalies": ref["anomalies"]}
        if a.error or b.error:
            row.update(failed=True, error=a.error or b.error)
        else:
            row.update(failed=False, e_ads=a.final_energy - b.final_energy,
                       anomalies=check_relaxation(a.atoms, initial=atoms)["anomalies"])
            row["abs_error"] = abs(row["e_ads"] - row["e_ads_ref"])
        rows.append(row)
    ok = [r for r in rows if not r["failed"] and not r["ref_anomalies"]]
    return {
        "checkpoint": str(checkpoint),
        "n_systems": len(rows),
        "n_failed": sum(r["failed"] for r in rows),
        "n_reference_anomalous": sum(bool(r["ref_anomalies"]) for r in rows),
        "adsorption_energy_mae": float(np.mean([r["abs_error"] for r in ok])) if ok else None,
        "n_scored": len(ok),
        "n_student_anomalous": sum(bool(r.get("anomalies")) for r in rows if not r["failed"]),
        "systems": rows,
    }


# ============================================================================ specialised checkpoint
def write_specialized_checkpoint(campaign: dict[str, Any], pool: SystemPool, path: str | Path) -> Path:
    """Save the campaign's final weights as ``path`` (.safetensors) with a card: what it was specialised
    on (surfaces, adsorbates, explored and held-out groups, reference calculator, rounds, frames) and its
    held-out relaxed adsorption-energy agreement before and after. Writes the card also as ``.md`` and
    ``.card.json`` next to it."""
    from ..checkpoint import load_checkpoint, save_checkpoint

    path = Path(path)
    final = campaign.get("final_checkpoint")
    if not final or not Path(final).is_file():
        raise ValueError("the campaign has not finished a round yet: rerun it until its training completes")
    model = load_checkpoint(final)
    cfg = campaign["config"]
    rounds = campaign["rounds"]
    last = rounds[max(rounds, key=int)]
    before = campaign.get("heldout_start") or {}
    after = last["phases"].get("evaluate") or {}
    card = {
        "kind": "specialized",
        "base_checkpoint": cfg["init"],
        "reference": cfg["teacher"],
        "surfaces": sorted(pool.surfaces),
        "adsorbates": sorted({g.adsorbate for g in pool.groups if g.adsorbate != "none"}),
        "explored_groups": [g.key for g in pool.groups],
        "heldout_groups": [g.key for g in pool.heldout],
        "rounds": sorted(int(r) for r in rounds),
        "new_frames": sum(r["phases"].get("select", {}).get("n_selected", 0) for r in rounds.values()),
        "reference_calls": sum(r["phases"].get("label", {}).get("teacher_calls", 0) for r in rounds.values()),
        "train_steps_per_round": cfg["train_steps"],
        "heldout_relaxation": {
            "definition": "relaxed adsorption energy E(slab+ads) - E(clean slab), each relaxed (BFGS, fmax "
                          f"{cfg['fmax']} eV/A, <= 300 steps) from the same initial structure by the model and by the "
                          "reference; MAE over held-out sites whose reference relaxation is not anomalous and whose "
                          "model relaxation did not fail",
            "mae_before_eV": before.get("adsorption_energy_mae"),
            "mae_after_eV": after.get("adsorption_energy_mae"),
            "n_scored_before": before.get("n_scored"),
            "n_scored_after": after.get("n_scored"),
            "n_failed_before": before.get("n_failed"),
            "n_failed_after": after.get("n_failed"),
            "n_heldout": after.get("n_systems"),
        },
    }
    meta = dict(model.metadata or {})
    meta.pop("config", None)
    meta.update(card=card, name=path.stem)
    save_checkpoint(model, path, meta)
    write_json(card, path.with_suffix(".card.json"))
    h = card["heldout_relaxation"]

    def fmt(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines = [
        f"# {path.stem}: specialised by active learning against `{card['reference']}`",
        "",
        f"Started from `{card['base_checkpoint']}`; {len(card['rounds'])} round(s), {card['new_frames']} new frames "
        f"from {card['reference_calls']} reference calls.",
        "",
        f"- surfaces: {', '.join(card['surfaces'])}",
        f"- adsorbates: {', '.join(card['adsorbates'])}",
        f"- explored (surface|adsorbate|site) groups: {len(card['explored_groups'])}",
        f"- held out (never explored, used for the numbers below): {', '.join(card['heldout_groups']) or 'none'}",
        "",
        "## Held-out relaxations",
        "",
        h["definition"] + ".",
        "",
        "| | MAE (eV) | scored | failed |",
        "|---|---|---|---|",
        f"| before | {fmt(h['mae_before_eV'])} | {h['n_scored_before']} | {h['n_failed_before']} |",
        f"| after | {fmt(h['mae_after_eV'])} | {h['n_scored_after']} | {h['n_failed_after']} |",
        "",
    ]
    with atomic_path(path.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines))
    return path
