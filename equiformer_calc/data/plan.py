"""Data generation, step 1: the plan. Which systems a dataset holds and in which split, as a pure
function of ``(seed, size)``.

Systems (:class:`Task`): **bulk** cells (metal x :data:`BULK_CELLS` kind x replica), **clean slabs**
(metal x facet x :data:`SLAB_CELLS` supercell), **adsorbate + slab** systems (every (metal, facet,
adsorbate, site kind) group of :mod:`equiformer_calc.surfaces`, site kinds including ``random``, times
``adsorbate_replicas``), **gas** molecules (teacher size) and **relaxation references** (held-out
named-site groups). :class:`DatasetSize` says how many of each; :data:`SIZES` are the presets.

Splits (:data:`SPLITS`): ``train``; ``val`` (random frames held out from training systems, drawn when
the frames are labelled); ``test_id`` (held-out (metal, facet, adsorbate, site) groups, bulk and slab
systems of seen combinations); ``test_ood`` (every system of a few (metal, adsorbate) combinations
never seen in training, :func:`choose_ood_combos`). Smaller explicit counts subsample the enumeration,
stratified so that every split keeps at least one system.

Every random draw comes from a generator seeded by :func:`system_seed` (the global seed and a key), so
the plan -- and every system's frames -- are the same whatever runs them. :func:`fingerprint` is what
a finished dataset records (``summary.json``) to be recognised as complete.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..surfaces import ADSORBATES, FACET_SITES, FACETS, GAS_MOLECULES, METALS, RANDOM_SITE, TEACHER_METALS

__all__ = [
    "GENERATOR_VERSION", "SPLITS", "SLAB_CELLS", "SLAB_CELL_WEIGHTS", "BULK_CELLS", "FrameRecipe", "DatasetSize",
    "SIZES", "resolve_size", "Task", "system_seed", "choose_ood_combos", "plan_tasks", "dataset_fingerprint",
]

#: Bump whenever a change alters the generated data (it is part of the completeness check).
GENERATOR_VERSION = "2.0.0"

#: Slab supercells ``(nx, ny, layers)`` per facet (16-36 metal atoms); drawn per system.
SLAB_CELLS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "fcc111": ((2, 2, 4), (3, 3, 3), (3, 3, 4)),
    "fcc100": ((2, 2, 4), (3, 3, 3), (3, 3, 4)),
    "fcc110": ((2, 2, 4), (3, 2, 4), (2, 3, 4)),
    "fcc211": ((3, 2, 3), (3, 2, 4), (3, 3, 4)),
}
SLAB_CELL_WEIGHTS = (0.4, 0.3, 0.3)

#: Bulk cell kinds: name -> (conventional cubic cell?, supercell repetition).
BULK_CELLS: dict[str, tuple[bool, tuple[int, int, int]]] = {
    "prim": (False, (1, 1, 1)),
    "conv": (True, (1, 1, 1)),
    "prim222": (False, (2, 2, 2)),
    "prim333": (False, (3, 3, 3)),
    "conv222": (True, (2, 2, 2)),
}

#: The split files of a dataset.
SPLITS: tuple[str, ...] = ("train", "val", "test_id", "test_ood")


@dataclass(frozen=True)
class FrameRecipe:
    """How many frames of each kind one system contributes.

    Attributes:
        relax: frames sampled along the BFGS relaxation (first and last always included).
        rattle: Gaussian-rattled frames (sigma uniform in 0.02-0.15 Å).
        md: Langevin-MD frames (300-1000 K, 1-2 fs), one every ``md_stride`` steps.
        md_stride: MD steps between recorded frames.
    """

    relax: int = 6
    rattle: int = 4
    md: int = 3
    md_stride: int = 8


@dataclass(frozen=True)
class DatasetSize:
    """Explicit dataset size; the presets are in :data:`SIZES`.

    ``None`` counts mean "every enumerated system". Enumeration: adsorbate systems are every
    (metal, facet, adsorbate, site kind) ``adsorbate_replicas`` times (site kinds include
    ``random``); slab systems are metal x facet x supercell; bulk systems are metal x cell kind
    ``bulk_replicas`` times. Smaller explicit counts subsample the enumeration, stratified so
    that every split keeps at least one system. ``relax_tasks`` counts relaxation references
    drawn from the held-out named-site groups (``None``: all of them).
    """

    adsorbate_systems: int | None = None
    slab_systems: int | None = None
    bulk_systems: int | None = None
    adsorbate_replicas: int = 1
    bulk_replicas: int = 2
    metals: tuple[str, ...] = METALS
    gas_molecules: tuple[str, ...] = ()
    gas_replicas: int = 3
    gas_frames: FrameRecipe = field(default_factory=lambda: FrameRecipe(relax=5, rattle=12, md=6, md_stride=4))
    ase_lattice_fraction: float = 0.0
    adsorbate_frames: FrameRecipe = field(default_factory=FrameRecipe)
    slab_frames: FrameRecipe = field(default_factory=lambda: FrameRecipe(relax=6, rattle=8, md=6, md_stride=10))
    bulk_frames: FrameRecipe = field(default_factory=lambda: FrameRecipe(relax=5, rattle=12, md=6, md_stride=10))
    max_relax_steps: int = 200
    relax_tasks: int | None = 100
    ood_combos: int = 6
    test_id_fraction: float = 0.1
    val_fraction: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (used in ``summary.json`` and the completeness check)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DatasetSize:
        """Build from a (possibly partial) mapping; nested recipes may be mappings too."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DatasetSize fields: {sorted(unknown)}")
        kwargs = dict(values)
        for key in ("adsorbate_frames", "slab_frames", "bulk_frames", "gas_frames"):
            if isinstance(kwargs.get(key), Mapping):
                kwargs[key] = FrameRecipe(**kwargs[key])
        for key in ("metals", "gas_molecules"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


SIZES: dict[str, DatasetSize] = {
    # a few hundred frames in well under a minute: tests and CI
    "small": DatasetSize(
        adsorbate_systems=24,
        slab_systems=4,
        bulk_systems=5,
        adsorbate_frames=FrameRecipe(relax=4, rattle=2, md=2, md_stride=5),
        slab_frames=FrameRecipe(relax=4, rattle=4, md=3, md_stride=5),
        bulk_frames=FrameRecipe(relax=3, rattle=6, md=3, md_stride=5),
        max_relax_steps=100,
        relax_tasks=4,
    ),
    # every system once: ~30k frames
    "medium": DatasetSize(),
    # three placements/supercells per adsorbate site, more bulk: ~3x medium
    "large": DatasetSize(adsorbate_replicas=3, bulk_replicas=6, relax_tasks=None),
    # strained / rattled bulk cells only (with stress), 6 replicas of each (metal, cell) like "large":
    # extra bulk data for the elastic response (4,571 frames with seed 1, 7 min on one busy core), to add
    # to medium's training set; see the bulk-properties note in checkpoints/emt-small.md
    "bulk": DatasetSize(adsorbate_systems=0, slab_systems=0, relax_tasks=0, bulk_replicas=6),
    # distillation from an expensive teacher: nine metals, half of the slabs at ASE's default lattice
    # constants, gas molecules. Measured with SevenNet-0 (seed 0): 12,670 frames from 37,068 calls,
    # 1.8 h wall on 2 shared cores (checkpoints/pbe-distilled-small-data/summary.json)
    "teacher": DatasetSize(
        metals=TEACHER_METALS,
        gas_molecules=GAS_MOLECULES,
        gas_replicas=4,
        ase_lattice_fraction=0.5,
        adsorbate_systems=400,
        slab_systems=90,
        bulk_systems=180,
        bulk_replicas=4,
        adsorbate_frames=FrameRecipe(relax=10, rattle=3, md=4, md_stride=3),
        slab_frames=FrameRecipe(relax=8, rattle=6, md=5, md_stride=3),
        bulk_frames=FrameRecipe(relax=5, rattle=10, md=5, md_stride=3),
        max_relax_steps=60,
        relax_tasks=48,
    ),
}


def resolve_size(size: str | DatasetSize | Mapping[str, Any]) -> tuple[str, DatasetSize]:
    """Turn a preset name, :class:`DatasetSize` or mapping of counts into ``(name, spec)``."""
    if isinstance(size, DatasetSize):
        return "custom", size
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
        return size, SIZES[size]
    if isinstance(size, Mapping):
        return "custom", DatasetSize.from_mapping(size)
    raise TypeError(f"size must be a preset name, DatasetSize or mapping, not {type(size).__name__}")


@dataclass(frozen=True)
class Task:
    """One unit of work: one system (or one relaxation reference)."""

    task_id: int
    kind: str  # bulk | slab | adsorbate | gas | relax_task
    system_id: str
    split: str  # train | test_id | test_ood (train frames are further split into train/val)
    metal: str
    facet: str = "bulk"
    adsorbate: str = "none"
    site: str = "none"
    cell: str = ""


def system_seed(seed: int, key: str) -> np.random.SeedSequence:
    """The seed of the random draws named ``key`` (a system id, ``"plan"``, ...) under global ``seed``."""
    return np.random.SeedSequence([int(seed), zlib.crc32(key.encode())])


def choose_ood_combos(seed: int, n: int, metals_pool: Sequence[str] = METALS) -> list[tuple[str, str]]:
    """``n`` (metal, adsorbate) pairs held out entirely; distinct metals/adsorbates while possible."""
    rng = np.random.default_rng(system_seed(seed, "ood-combos"))
    adsorbates = list(ADSORBATES)
    combos: list[tuple[str, str]] = []
    while len(combos) < n:
        metals = [metals_pool[i] for i in rng.permutation(len(metals_pool))]
        ads = [adsorbates[i] for i in rng.permutation(len(adsorbates))]
        for m, a in zip(metals, ads, strict=False):
            if len(combos) < n and (m, a) not in combos:
                combos.append((m, a))
        if len(combos) >= len(metals_pool) * len(adsorbates):
            break
    return sorted(combos)


def _allocate(sizes: Mapping[str, int], n: int) -> dict[str, int]:
    """Split ``n`` picks over groups proportionally (largest remainder), capped at group sizes.

    Every group gets at least one pick when ``n`` allows it; ``train`` is served first otherwise.
    """
    groups = sorted(sizes, key=lambda g: (g != "train", g))
    quota = {g: 0 for g in groups}
    for g in groups[: min(n, len(groups))]:
        quota[g] = 1
    left = n - sum(quota.values())
    spare = {g: sizes[g] - quota[g] for g in groups}
    total_spare = sum(spare.values())
    if left > 0 and total_spare > 0:
        exact = {g: left * spare[g] / total_spare for g in groups}
        for g in groups:
            quota[g] += min(spare[g], int(exact[g]))
        by_remainder = sorted(groups, key=lambda g: (-(exact[g] - int(exact[g])), groups.index(g)))
        for g in by_remainder:
            if sum(quota.values()) >= n:
                break
            if quota[g] < sizes[g]:
                quota[g] += 1
    return quota


def _stratified_subsample(
    items: list[tuple[Any, str]], n: int | None, rng: np.random.Generator
) -> list[tuple[Any, str]]:
    """Keep ``n`` of the ``(item, split)`` pairs, proportionally per split (see :func:`_allocate`)."""
    if n is None or n >= len(items):
        return items
    by_split: dict[str, list[int]] = {}
    for idx, (_, split) in enumerate(items):
        by_split.setdefault(split, []).append(idx)
    quota = _allocate({k: len(v) for k, v in by_split.items()}, n)
    keep: list[int] = []
    for split in sorted(by_split):
        keep.extend(int(i) for i in rng.choice(by_split[split], size=quota[split], replace=False))
    return [items[i] for i in sorted(keep)]


def _assign_test_id(keys: list[Any], fraction: float, rng: np.random.Generator) -> set[Any]:
    n = int(round(fraction * len(keys)))
    if fraction > 0 and len(keys) >= 3:
        n = max(n, 1)
    return {keys[i] for i in rng.permutation(len(keys))[:n]}


def plan_tasks(seed: int, spec: DatasetSize) -> tuple[list[Task], list[tuple[str, str]]]:
    """Enumerate systems, assign splits and subsample; returns (tasks, test_ood combos)."""
    rng = np.random.default_rng(system_seed(seed, "plan"))
    METALS = spec.metals  # noqa: N806 (the domain of this spec)
    ood = set(choose_ood_combos(seed, spec.ood_combos, METALS))

    # bulk
    bulk_items: list[tuple[Any, str]] = []
    bulk_keys = [(m, k, r) for m in METALS for k in BULK_CELLS for r in range(spec.bulk_replicas)]
    held = _assign_test_id(bulk_keys, spec.test_id_fraction, rng)
    bulk_items = [(key, "test_id" if key in held else "train") for key in bulk_keys]
    bulk_items = _stratified_subsample(bulk_items, spec.bulk_systems, rng)

    # clean slabs
    slab_keys = [(m, f, c) for m in METALS for f in FACETS for c in SLAB_CELLS[f]]
    held = _assign_test_id(slab_keys, spec.test_id_fraction, rng)
    slab_items = [(key, "test_id" if key in held else "train") for key in slab_keys]
    slab_items = _stratified_subsample(slab_items, spec.slab_systems, rng)

    # adsorbate groups (metal, facet, adsorbate, site); replicas stay in their group's split
    groups = [(m, f, a, s) for m in METALS for f in FACETS for a in ADSORBATES for s in (*FACET_SITES[f], RANDOM_SITE)]
    in_dist = [g for g in groups if (g[0], g[2]) not in ood]
    held = _assign_test_id(in_dist, spec.test_id_fraction, rng)
    group_split = {g: ("test_ood" if (g[0], g[2]) in ood else "test_id" if g in held else "train") for g in groups}
    ads_items = [((*g, r), group_split[g]) for g in groups for r in range(spec.adsorbate_replicas)]
    ads_items = _stratified_subsample(ads_items, spec.adsorbate_systems, rng)

    # relaxation references: named-site groups never used in training
    pool = [(g, group_split[g]) for g in groups if group_split[g] != "train" and g[3] != RANDOM_SITE]
    relax_items = _stratified_subsample(pool, spec.relax_tasks, rng)

    # gas-phase molecules: one replica of each held out when there are three or more
    gas_keys = [(g, r) for g in spec.gas_molecules for r in range(spec.gas_replicas)]
    held_gas = {(g, spec.gas_replicas - 1) for g in spec.gas_molecules} if spec.gas_replicas >= 3 else set()
    gas_items = [(key, "test_id" if key in held_gas else "train") for key in gas_keys]

    tasks: list[Task] = []

    def add(**kwargs: Any) -> None:
        tasks.append(Task(task_id=len(tasks), **kwargs))

    for (m, k, r), split in bulk_items:
        add(kind="bulk", system_id=f"bulk-{m}-{k}-r{r}", split=split, metal=m, cell=k)
    for (m, f, c), split in slab_items:
        cell = "x".join(map(str, c))
        add(kind="slab", system_id=f"slab-{m}-{f}-{cell}", split=split, metal=m, facet=f, cell=cell)
    for (m, f, a, s, r), split in ads_items:
        add(kind="adsorbate", system_id=f"ads-{m}-{f}-{a}-{s}-r{r}", split=split, metal=m, facet=f, adsorbate=a, site=s)
    for (g, r), split in gas_items:
        add(kind="gas", system_id=f"gas-{g}-r{r}", split=split, metal="none", facet="gas", adsorbate=g)
    for (m, f, a, s), split in relax_items:
        add(kind="relax_task", system_id=f"relax-{m}-{f}-{a}-{s}", split=split, metal=m, facet=f, adsorbate=a, site=s)
    return tasks, sorted(ood)


def dataset_fingerprint(seed: int, size_name: str, spec: DatasetSize, labeller: Any, compress: bool) -> dict[str, Any]:
    """What identifies a dataset: seed, size (name and counts), generator version, labeller (``name``
    and ``version`` of a :class:`~equiformer_calc.data.labellers.Labeller`) and compression."""
    return {
        "seed": int(seed),
        "size": size_name,
        "spec": spec.to_dict(),
        "version": GENERATOR_VERSION,
        "labeller": labeller.name,
        "labeller_version": labeller.version,
        "compress": bool(compress),
    }

