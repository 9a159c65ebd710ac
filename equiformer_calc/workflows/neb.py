"""Reaction barriers by the nudged elastic band, with every image of a step in one batched model call.

:func:`run_neb` builds the band (ASE's ``NEB``: linear or IDPP interpolation, climbing image,
improved tangents) and optimises it with an unmodified ASE optimizer. The only change to running
ASE's NEB with one calculator per image is where the energies and forces come from: each image's
calculator is a stand-in that, when asked, evaluates *all* images whose positions changed in ONE
``predict`` call of the model and hands every image its result. The band therefore takes exactly the
steps it would take with ASE's image-by-image evaluation (equal to round-off; tested in float64).

Resumable: with ``out_dir``, every optimizer step appends a line to ``neb_journal.jsonl`` (all image
positions, energies, the largest force and the optimizer's state); rerunning the same call after an
interruption (even SIGKILL) continues from the last complete line. At the end: the energy profile
(``neb_profile.csv``, ``neb_profile.png``), the band (``neb_band.extxyz``), the barrier, and the
imaginary frequency at the saddle from the batched vibrations of
:mod:`~equiformer_calc.workflows.vibrations`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.mep import NEB
from ase.optimize import MDMin

from ..io import write_json, write_text_atomic
from ._common import new_figure, resolve_calculator, save_figure, write_csv
from .relax import OPTIMIZERS as RELAX_OPTIMIZERS
from .vibrations import VibrationResult, read_journal, vibrate

__all__ = ["NEBResult", "run_neb", "BatchedImages", "NEB_OPTIMIZERS", "interpolate_band", "plot_profile", "write_neb_outputs"]

log = logging.getLogger(__name__)

#: optimizers for the band (ASE's; FIRE is the usual choice for NEB)
NEB_OPTIMIZERS: dict[str, Any] = {**RELAX_OPTIMIZERS, "MDMIN": MDMin}
JOURNAL = "neb_journal.jsonl"
#: optimizer attributes ASE's restart file leaves out or its constructor overwrites after reading it
#: (FIRE's dt), journalled so that a resumed band takes exactly the steps of an uninterrupted one
_EXTRA_STATE: dict[str, tuple[str, ...]] = {"FIRE": ("dt", "a", "Nsteps"), "MDMIN": ("dt",)}
SETTINGS = "neb_settings.json"


class BatchedImages:
    """Gives each image of a band a calculator that evaluates every changed image in one batched
    ``calc.predict`` call (``calls`` counts them; ``structures`` the structures evaluated)."""

    def __init__(self, calc: Any, images: Sequence[Atoms]) -> None:
        if not hasattr(calc, "predict"):
            raise TypeError(f"{type(calc).__name__} has no batched predict(); use an EquiformerCalculator")
        self.calc = calc
        self.images = list(images)
        self.calculators = [_ImageCalculator(self, k) for k in range(len(self.images))]
        for image, c in zip(self.images, self.calculators):
            image.calc = c
        self.calls = 0
        self.structures = 0

    def evaluate(self) -> None:
        """Evaluate every image whose calculator has no results for its current positions."""
        stale = [k for k, (image, c) in enumerate(zip(self.images, self.calculators))
                 if c.atoms is None or not c.results or c.check_state(image)]
        if not stale:
            return
        structures = [self.images[k].copy() for k in stale]
        for s in structures:
            s.calc = None
        results = self.calc.predict(structures, properties=["energy", "forces"])
        self.calls += 1
        self.structures += len(stale)
        for k, s, r in zip(stale, structures, results):
            c = self.calculators[k]
            c.atoms = s
            c.results = {"energy": float(r["energy"]), "free_energy": float(r["energy"]),
                         "forces": np.asarray(r["forces"], dtype=float)}


class _ImageCalculator(Calculator):
    """One image's calculator: its results come from :meth:`BatchedImages.evaluate`."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, batch: BatchedImages, index: int) -> None:
        super().__init__()
        self.batch = batch
        self.index = index

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        image = self.batch.images[self.index]
        if atoms is not None and atoms is not image:  # asked about another structure: evaluate it alone
            Calculator.calculate(self, atoms, properties, system_changes)
            s = atoms.copy()
            s.calc = None
            r = self.batch.calc.predict([s], properties=["energy", "forces"])[0]
            self.results = {"energy": float(r["energy"]), "free_energy": float(r["energy"]),
                            "forces": np.asarray(r["forces"], dtype=float)}
            return
        self.batch.evaluate()


@dataclass
class NEBResult:
    """A converged (or stopped) band.

    ``images``: the band, endpoints included; ``energies`` (eV) and ``path`` (A, cumulative distance
    along the band) per image; ``barrier``: forward barrier max(E) - E(initial) (eV);
    ``reverse_barrier``: max(E) - E(final); ``reaction_energy``: E(final) - E(initial);
    ``saddle``: index of the highest image (the climbing image with ``climb=True``);
    ``imaginary_frequency``: cm^-1 (a positive number meaning ``i`` cm^-1) of the saddle's most
    negative mode, None when the saddle has none or vibrations were not run; ``vibrations``: the
    saddle's :class:`~equiformer_calc.workflows.vibrations.VibrationResult`; ``calls``: batched
    model calls of the band; ``resumed_from``: the journal step this run continued from (None).
    """

    images: list[Atoms]
    energies: np.ndarray
    path: np.ndarray
    barrier: float
    reverse_barrier: float
    reaction_energy: float
    saddle: int
    converged: bool
    nsteps: int
    fmax: float
    imaginary_frequency: float | None = None
    vibrations: VibrationResult | None = None
    calls: int = 0
    resumed_from: int | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        """One line with the barrier (eV) and the saddle's imaginary frequency."""
        freq = "not computed" if self.vibrations is None else (
            "none (the saddle is not a first-order saddle)" if self.imaginary_frequency is None
            else f"{self.imaginary_frequency:.1f}i cm^-1")
        return (f"barrier {self.barrier:.4f} eV (reverse {self.reverse_barrier:.4f} eV, reaction energy "
                f"{self.reaction_energy:+.4f} eV) at image {self.saddle}; imaginary frequency at the saddle: {freq}; "
                f"{'converged' if self.converged else 'NOT converged'} in {self.nsteps} steps (fmax {self.fmax:.3f} eV/A)")


def _check_endpoints(initial: Atoms, final: Atoms, images: int, interpolation: str) -> None:
    if images < 1:
        raise ValueError(f"images must be >= 1 (intermediate images), got {images}")
    if len(initial) != len(final):
        raise ValueError(f"initial has {len(initial)} atoms and final {len(final)}: an NEB needs the same atoms")
    if initial.get_chemical_symbols() != final.get_chemical_symbols():
        raise ValueError("initial and final have the same number of atoms but not in the same order of elements")
    if interpolation not in ("idpp", "linear"):
        raise ValueError(f"interpolation must be 'idpp' or 'linear', got {interpolation!r}")


def interpolate_band(initial: Atoms, final: Atoms, images: int, interpolation: str = "idpp", mic: bool = False,
                     climb: bool = True, k: float = 0.1, method: str = "improvedtangent") -> tuple[list[Atoms], NEB]:
    """``images`` intermediate images between ``initial`` and ``final`` (copies; constraints of
    ``initial`` kept on every image), interpolated linearly or by IDPP, and ASE's NEB over them."""
    _check_endpoints(initial, final, images, interpolation)
    band = [initial.copy()] + [initial.copy() for _ in range(images)] + [final.copy()]
    band[-1].set_constraint(initial.constraints)
    for image in band:
        image.calc = None
    neb = NEB(band, k=k, climb=climb, method=method)
    neb.interpolate(method=interpolation if interpolation == "idpp" else "linear", mic=mic)
    return band, neb


def _fingerprint(initial: Atoms, final: Atoms, settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for a in (initial, final):
        h.update(a.numbers.tobytes())
        h.update(np.round(a.positions, 6).tobytes())
        h.update(np.round(a.cell.array, 6).tobytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _last_journal_line(path: Path) -> dict[str, Any] | None:
    """The last complete line of the journal (a line cut by a kill is removed from the file)."""
    lines = read_journal(path)
    return lines[-1] if lines else None


def _path_length(images: Sequence[Atoms]) -> np.ndarray:
    """Cumulative distance (A) along the band, image to image."""
    d = [0.0]
    for a, b in zip(images[:-1], images[1:]):
        d.append(d[-1] + float(np.linalg.norm(b.positions - a.positions)))
    return np.asarray(d)


def plot_profile(path: str | os.PathLike, distance: np.ndarray, energies: np.ndarray, saddle: int,
                 title: str = "") -> Path:
    """The NEB energy profile (relative to the initial state) with the saddle marked."""
    rel = energies - energies[0]
    fig = new_figure((5.6, 3.6))
    ax = fig.subplots()
    ax.plot(distance, rel, "o-", lw=1.4)
    ax.plot(distance[saddle], rel[saddle], "*", ms=14, color="C3", label=f"saddle: {rel[saddle]:.3f} eV")
    ax.set_xlabel("reaction coordinate (A)")
    ax.set_ylabel("E - E(initial) (eV)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)


def run_neb(
    initial: Atoms,
    final: Atoms,
    images: int = 5,
    calculator: Any = None,
    climb: bool = True,
    fmax: float = 0.05,
    steps: int = 500,
    optimizer: str = "FIRE",
    interpolation: str = "idpp",
    mic: bool = False,
    k: float = 0.1,
    method: str = "improvedtangent",
    out_dir: str | os.PathLike | None = None,
    saddle_vibrations: bool = True,
    relax_endpoints: bool = False,
    vib_indices: Sequence[int] | None = None,
) -> NEBResult:
    """Nudged-elastic-band barrier between two relaxed structures (same atoms, same order).

    images: intermediate images; climb: climbing image (ASE's ``NEB(climb=True)``, from the first
    step); fmax (eV/A) / steps / optimizer (FIRE, BFGS, LBFGS, MDMIN): ASE's optimizer of the whole
    band; interpolation: ``idpp`` or ``linear`` (``mic`` for periodic wrap-around); k / method: ASE's
    spring constant and tangent method. The constraints of ``initial`` hold on every image.
    out_dir: journal and outputs; rerunning the same call continues a stopped run (a journal of
    other inputs or settings is an error). saddle_vibrations: batched finite-difference
    vibrations of the highest image, displacing ``vib_indices`` (default: the atoms that move more
    than 0.1 A between initial and final). relax_endpoints: relax both endpoints first (together,
    batched; to ``min(fmax, 0.02)`` eV/A) with their constraints. calculator: the model (a calculator,
    a Predictor, a :class:`~equiformer_calc.calculators.settings.ModelSettings`, a checkpoint name or
    path; None: the default checkpoint; see :func:`~equiformer_calc.calculators.local.resolve_calculator`)."""
    opt_name = optimizer.upper()
    if opt_name not in NEB_OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(NEB_OPTIMIZERS)}")
    if fmax <= 0 or steps < 0:
        raise ValueError(f"fmax must be > 0 and steps >= 0, got fmax={fmax}, steps={steps}")
    _check_endpoints(initial, final, images, interpolation)
    calc = resolve_calculator(calculator)

    out = Path(out_dir) if out_dir is not None else None
    journal = restart = last = None
    if out is not None:
        settings = {"images": images, "climb": climb, "fmax": fmax, "optimizer": opt_name, "interpolation":
                    interpolation, "mic": mic, "k": k, "method": method, "relax_endpoints": relax_endpoints}
        journal, restart, last = _open_journal(out, initial, final, settings)
    ends = (initial, final)
    if relax_endpoints and last is None:  # (a resumed band has its endpoints in the journal)
        ends = _relax_endpoints(initial, final, calc, fmax)
    band, neb = interpolate_band(ends[0], ends[1], images, interpolation, mic, climb, k, method)
    batch = BatchedImages(calc, band)
    extra_state, resumed_from = _resume_band(band, last, restart, out)
    done_steps = resumed_from or 0
    opt = NEB_OPTIMIZERS[opt_name](neb, restart=None if restart is None else str(restart), logfile=None)
    for name, value in extra_state.items():
        setattr(opt, name, value)
    opt.attach(_Recorder(band, neb, opt, opt_name, restart, journal, done_steps), interval=1)
    converged = bool(opt.run(fmax=fmax, steps=max(steps - done_steps, 0)))
    result = _band_result(band, neb, converged, done_steps + opt.nsteps, batch.calls, resumed_from)
    if not converged:
        log.warning("the band did not converge in %d steps (fmax %.3f > %.3f eV/A): the barrier is not final",
                    result.nsteps, result.fmax, fmax)
    if saddle_vibrations:
        _saddle_vibrations(result, initial, final, vib_indices, calc)
    if out is not None:
        result.files = write_neb_outputs(result, out)
    return result


def _open_journal(out: Path, initial: Atoms, final: Atoms,
                  settings: dict[str, Any]) -> tuple[Path, Path, dict[str, Any] | None]:
    """Set-up of a journalled run in ``out``: the journal, the optimizer's restart file and the last
    journal line (None for a new run); a journal of other inputs or settings is an error."""
    out.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(initial, final, settings)
    journal, restart = out / JOURNAL, out / "neb_optimizer.json"
    settings_path = out / SETTINGS
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        if old.get("fingerprint") != fp:
            raise ValueError(f"{out} holds an NEB of other inputs or settings ({old.get('settings')}); "
                             f"this run: {settings}. Use another --out-dir or delete it")
    else:
        write_json({"fingerprint": fp, "settings": settings}, settings_path)
    return journal, restart, _last_journal_line(journal)


def _relax_endpoints(initial: Atoms, final: Atoms, calc: Any, fmax: float) -> tuple[Atoms, Atoms]:
    """Both endpoints relaxed together (batched) to ``min(fmax, 0.02)`` eV/A; an error if one does not relax."""
    from .batch import relax_batch

    log.info("relaxing the endpoints (one batched model call per step)")
    relaxed = relax_batch([initial, final], calculator=calc, fmax=min(fmax, 0.02), steps=1000, progress=False)
    for r, name in zip(relaxed, ("initial", "final")):
        if r.error is not None or not r.converged:
            raise ValueError(f"the {name} state did not relax ({r.error or 'not converged in 1000 steps'})")
    return relaxed[0].atoms, relaxed[1].atoms


def _resume_band(band: list[Atoms], last: dict[str, Any] | None, restart: Path | None,
                 out: Path | None) -> tuple[dict[str, Any], int | None]:
    """Put a stopped run's band and optimizer state back (from the journal's ``last`` line); returns the
    optimizer's extra state and the step resumed from (None for a new run, whose stale restart file goes)."""
    if last is None:
        if restart is not None and restart.exists():
            restart.unlink()
        return {}, None
    assert restart is not None
    for image, pos in zip(band, last["positions"]):
        image.positions = np.asarray(pos, dtype=float)
    if last.get("optimizer_state") is not None:
        write_text_atomic(restart, last["optimizer_state"])
    elif restart.exists():
        restart.unlink()
    done_steps = int(last["step"])
    log.info("resuming the NEB in %s from step %d", out, done_steps)
    return last.get("extra_state") or {}, done_steps


class _Recorder:
    """The optimizer's observer: one journal line per step (band, energies, fmax, optimizer state), fsynced;
    its first call re-records the resumed state."""

    def __init__(self, band: list[Atoms], neb: Any, opt: Any, opt_name: str, restart: Path | None,
                 journal: Path | None, step: int) -> None:
        self.band, self.neb, self.opt, self.opt_name = band, neb, opt, opt_name
        self.restart, self.journal, self.step = restart, journal, step

    def __call__(self) -> None:
        energies = [float(im.get_potential_energy()) for im in self.band]
        f = self.neb.get_forces()
        restart = self.restart
        line = {"step": self.step, "positions": [im.positions.tolist() for im in self.band], "energies": energies,
                "fmax": float(np.sqrt((f**2).sum(axis=1).max())),
                "optimizer_state": restart.read_text() if restart is not None and restart.exists() else None,
                "extra_state": {name: getattr(self.opt, name) for name in _EXTRA_STATE.get(self.opt_name, ())}}
        if self.journal is not None:
            with open(self.journal, "a") as fh:
                fh.write(json.dumps(line) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        log.info("NEB step %d: max E - E0 = %.4f eV, fmax %.4f eV/A", self.step, max(energies) - energies[0],
                 line["fmax"])
        self.step += 1


def _band_result(band: list[Atoms], neb: Any, converged: bool, nsteps: int, calls: int,
                 resumed_from: int | None) -> NEBResult:
    """The :class:`NEBResult` of the final band (copies of its images without calculators)."""
    forces = neb.get_forces()
    fmax_now = float(np.sqrt((forces**2).sum(axis=1).max()))
    energies = np.array([im.get_potential_energy() for im in band], dtype=float)
    distance = _path_length(band)
    saddle = int(np.argmax(energies))
    final_band = []
    for im in band:
        a = im.copy()
        a.calc = None
        final_band.append(a)
    return NEBResult(final_band, energies, distance, float(energies[saddle] - energies[0]),
                     float(energies[saddle] - energies[-1]), float(energies[-1] - energies[0]), saddle,
                     converged, nsteps, fmax_now, calls=calls, resumed_from=resumed_from)


def _saddle_vibrations(result: NEBResult, initial: Atoms, final: Atoms, vib_indices: Sequence[int] | None,
                       calc: Any) -> None:
    """Vibrations of the highest image into ``result`` (displacing ``vib_indices``, default: the atoms
    that move more than 0.1 A between the endpoints); a warning when it is an endpoint."""
    saddle = result.saddle
    if not 0 < saddle < len(result.images) - 1:
        log.warning("the highest image is an endpoint: no barrier between the endpoints, no saddle vibrations")
        return
    if vib_indices is None:
        moved = np.linalg.norm(final.positions - initial.positions, axis=1) > 0.1
        vib_indices = [int(i) for i in np.flatnonzero(moved)] or None
    result.vibrations = vibrate(result.images[saddle], indices=vib_indices, calculator=calc, progress=False)
    imag = result.vibrations.imaginary
    result.imaginary_frequency = float(-imag.min()) if len(imag) else None
    if len(imag) != 1:
        log.warning("the saddle image has %d imaginary modes (a first-order saddle has 1)", len(imag))


def write_neb_outputs(result: NEBResult, out: Path) -> dict[str, Path]:
    """``neb_profile.csv``, ``neb_profile.png``, ``neb_band.extxyz`` and ``neb_result.json`` in ``out``."""
    from ase.io import write

    from ..io import atomic_path

    rel = result.energies - result.energies[0]
    files = {
        "profile": write_csv(out / "neb_profile.csv", ["image", "path_A", "energy_eV", "relative_eV"],
                             [[k, result.path[k], result.energies[k], rel[k]] for k in range(len(rel))]),
        "plot": plot_profile(out / "neb_profile.png", result.path, result.energies, result.saddle,
                             title=f"NEB: barrier {result.barrier:.3f} eV"),
    }
    with atomic_path(out / "neb_band.extxyz", suffix=".extxyz") as tmp:
        write(tmp, result.images, format="extxyz")
    files["band"] = out / "neb_band.extxyz"
    files["result"] = write_json({
        "barrier_eV": result.barrier, "reverse_barrier_eV": result.reverse_barrier,
        "reaction_energy_eV": result.reaction_energy, "saddle_image": result.saddle,
        "imaginary_frequency_cm-1": result.imaginary_frequency, "converged": result.converged,
        "nsteps": result.nsteps, "fmax": result.fmax, "batched_calls": result.calls,
        "saddle_frequencies_cm-1": None if result.vibrations is None else result.vibrations.frequencies.tolist(),
    }, out / "neb_result.json")
    return files
