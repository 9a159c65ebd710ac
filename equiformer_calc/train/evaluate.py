"""Error metrics and parity plots of a model on labelled structures.

``equiformer-calc evaluate CKPT DATA [DATA ...] [--out DIR] [--by config_type,frame_kind,...]``
evaluates a checkpoint (a path or a shipped name) on one or more extxyz / ASE-db files and
reports, overall and per subset (grouped by frame ``info`` keys, and by file when several are
given):

* energy MAE / RMSE per structure (eV) and per atom (eV/atom),
* force MAE / RMSE over the components of *free* atoms (OC20 convention: atoms held by
  ``FixAtoms``, i.e. with a ``fixed`` array entry True, are excluded) and the mean per-atom
  cosine similarity between predicted and reference force vectors on free atoms,
* stress MAE / RMSE over the Voigt components of 3D-periodic frames that carry a stress label.

With ``--out`` it writes ``metrics.json`` and parity plots ``parity_energy.png`` (energy per
atom), ``parity_forces.png`` (force components of free atoms) and ``parity_stress.png`` (when
there are stress labels); without it the metrics JSON goes to stdout. (The AdsorbML-style
relaxation benchmark on a datagen output is ``equiformer-calc adsorbml``,
:mod:`equiformer_calc.workflows.adsorbml`.) The model is called only
through :func:`~equiformer_calc.predictor.compute` on :func:`~equiformer_calc.train.data.collate`
batches -- the same path as the trainer's loss and validation.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from ase.stress import full_3x3_to_voigt_6_stress

from ..checkpoint import load_model
from ..io import new_figure, save_figure, write_json
from ..model import Equiformer
from ..predictor import compute, resolve_dtype
from ..runtime import configure_runtime
from ..data.readers import LabelKeys
from .data import Sample, collate, read_samples

__all__ = [
    "Predictions",
    "DEFAULT_BY",
    "predict_samples",
    "compute_metrics",
    "grouped_metrics",
    "plot_parity",
    "evaluate",
    "evaluate_samples",
]

log = logging.getLogger(__name__)

#: frame ``info`` keys that the CLI groups by unless told otherwise
DEFAULT_BY: tuple[str, ...] = ("config_type", "frame_kind", "split", "metal")
#: the group key under which several data files are told apart
FILE_KEY = "file"
_MISSING = "<none>"
#: cosine similarity of two force vectors is dot / max(|a| |b|, eps), as torch.cosine_similarity
_COS_EPS = 1e-8


@dataclass
class Predictions:
    """Model predictions next to the reference labels of a list of samples (input order).

    Per frame: ``energy`` / ``energy_ref`` (F,) eV, ``num_atoms`` (F,), ``stress`` /
    ``stress_ref`` (F, 6) Voigt eV/A^3 with NaN rows where a frame has no stress label or is not
    3D-periodic. Per atom (frames concatenated): ``forces`` / ``forces_ref`` (N, 3) eV/A,
    ``free`` (N,) bool, ``frame`` (N,) index of the owning frame. ``info``: each frame's
    scalar ``info`` entries.
    """

    energy: np.ndarray
    energy_ref: np.ndarray
    num_atoms: np.ndarray
    forces: np.ndarray
    forces_ref: np.ndarray
    free: np.ndarray
    frame: np.ndarray
    stress: np.ndarray
    stress_ref: np.ndarray
    info: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.energy.shape[0])

    def group_labels(self, key: str) -> list[str]:
        """The value of ``info[key]`` of every frame as a string (``"<none>"`` where absent)."""
        return [str(i.get(key, _MISSING)) for i in self.info]


# ----------------------------------------------------------------------------- predictions
def _model_on(model: Equiformer, device: torch.device, dtype: torch.dtype) -> Equiformer:
    """``model`` itself when it already lives on ``device`` / ``dtype``, else a converted copy
    (the caller's model is never modified)."""
    ref = next(iter(model.parameters()), None)
    if ref is None or (ref.device == device and ref.dtype == dtype):
        return model
    return copy.deepcopy(model).to(device=device, dtype=dtype)


def _batches(samples: Sequence[Sample], batch_size: int) -> list[list[int]]:
    """Indices of ``samples`` in batches of at most ``batch_size``; 3D-periodic frames are batched
    only with each other, so stress can be evaluated for them."""
    periodic = [k for k, s in enumerate(samples) if bool(s.graph.pbc.all())]
    other = [k for k, s in enumerate(samples) if not bool(s.graph.pbc.all())]
    out: list[list[int]] = []
    for group in (other, periodic):
        out += [group[k : k + batch_size] for k in range(0, len(group), batch_size)]
    return out


#: what one model batch gives each of its frames: (energy, forces (n, 3), Voigt stress or None)
_FrameOutput = tuple[float, np.ndarray, "np.ndarray | None"]


def _predict_batch(net: Equiformer, chunk: Sequence[Sample], device: torch.device, dtype: torch.dtype) -> list[_FrameOutput]:
    """One model call (:func:`compute` on a :func:`collate` batch) for the frames of ``chunk``."""
    batch = collate(chunk, device, dtype)
    want_stress = bool(batch.graph.pbc.all())
    with torch.enable_grad():
        out = compute(net, batch.graph, forces=True, stress=want_stress)
    e = out["energy"].detach().cpu().double().numpy()
    f = out["forces"].detach().cpu().double().numpy()
    s = full_3x3_to_voigt_6_stress(out["stress"].detach().cpu().double().numpy()) if want_stress else None
    ptr = batch.graph.ptr.tolist()
    return [(float(e[b]), f[ptr[b] : ptr[b + 1]], None if s is None else s[b]) for b in range(len(chunk))]


@dataclass
class EvalChunk:
    """One fan-out task of :func:`predict_samples`: whole model batches (``batches``: lists of
    indices into ``samples``) evaluated with the executor's model ``model`` (a model key)."""

    model: str
    samples: list[Sample]
    batches: list[list[int]]


def eval_chunk(job: EvalChunk) -> list[list[_FrameOutput]]:
    """Run an :class:`EvalChunk` where it lands (in-process or on a Dask worker): per batch, the
    outputs of its frames."""
    from ..distributed import worker_model

    predictor = worker_model(job.model).predictor
    return [_predict_batch(predictor.model, [job.samples[k] for k in idx], predictor.device, predictor.dtype)
            for idx in job.batches]


def predict_samples(
    model: Equiformer,
    samples: Sequence[Sample],
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    progress: bool = False,
    executor: Any = None,
    batches_per_task: int = 8,
) -> Predictions:
    """Run ``model`` (via :func:`compute`) on ``samples`` in batches; energies, forces and, for
    3D-periodic frames, stress, next to the labels. The model is evaluated in eval mode (its
    train/eval flag is restored afterwards). With an
    :class:`~equiformer_calc.distributed.Executor`, tasks of ``batches_per_task`` batches fan
    out to its workers (each has its own copy of the model); the batches, hence the numbers
    (with the same torch threads per process), are the same as in-process."""
    from ..io import progress as tqdm  # live bar on a terminal, plain lines in a log

    configure_runtime()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batches_per_task < 1:
        raise ValueError(f"batches_per_task must be >= 1, got {batches_per_task}")
    device = torch.device(device)
    dtype = resolve_dtype(dtype)
    n_frames = len(samples)
    counts = np.array([s.num_atoms for s in samples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    energy = np.full(n_frames, np.nan)
    forces = np.full((int(offsets[-1]), 3), np.nan)
    stress = np.full((n_frames, 6), np.nan)
    stress_ref = np.full((n_frames, 6), np.nan)
    batches = _batches(samples, batch_size)

    def store(idx: list[int], outputs: list[_FrameOutput]) -> None:
        for k, (e, f, s) in zip(idx, outputs):
            energy[k] = e
            forces[offsets[k] : offsets[k + 1]] = f
            if s is not None and samples[k].stress is not None:
                stress[k] = s
                stress_ref[k] = samples[k].stress

    bar = tqdm(total=len(batches), desc="evaluate", unit="batch", disable=not progress, leave=False, dynamic_ncols=True)
    if executor is not None:
        key = executor.register_model(model, device=str(device), dtype=str(dtype).replace("torch.", ""))
        groups = [batches[i : i + batches_per_task] for i in range(0, len(batches), batches_per_task)]

        def job(group: list[list[int]]) -> EvalChunk:  # ship only the frames of the task, re-indexed
            frames = [k for idx in group for k in idx]
            local = {k: j for j, k in enumerate(frames)}
            return EvalChunk(key, [samples[k] for k in frames], [[local[k] for k in idx] for idx in group])

        failed: list[str] = []
        for outcome in executor.map(eval_chunk, (job(g) for g in groups), name="evaluate"):
            if outcome.error is not None:
                failed.append(f"task {outcome.index} (frames {groups[outcome.index][0][0]}...): {outcome.error}")
                continue
            for idx, outputs in zip(groups[outcome.index], outcome.value):
                store(idx, outputs)
                bar.update(1)
        bar.close()
        if failed:
            raise RuntimeError(f"{len(failed)} evaluation task(s) failed: " + "; ".join(failed))
    else:
        net = _model_on(model, device, dtype)
        was_training = net.training
        net.eval()
        try:
            for idx in batches:
                store(idx, _predict_batch(net, [samples[k] for k in idx], device, dtype))
                bar.update(1)
        finally:
            net.train(was_training)
            bar.close()
    return Predictions(
        energy=energy,
        energy_ref=np.array([s.energy for s in samples], dtype=np.float64),
        num_atoms=counts,
        forces=forces,
        forces_ref=np.concatenate([s.forces for s in samples]).astype(np.float64) if samples else np.zeros((0, 3)),
        free=np.concatenate([s.free for s in samples]).astype(bool) if samples else np.zeros(0, dtype=bool),
        frame=np.repeat(np.arange(n_frames), counts),
        stress=stress,
        stress_ref=stress_ref,
        info=[dict(s.info) for s in samples],
    )


# ----------------------------------------------------------------------------- metrics
def compute_metrics(pred: Predictions, frames: np.ndarray | Sequence[int] | None = None) -> dict[str, float | int]:
    """Error metrics over all frames of ``pred`` (or the frame indices / boolean mask ``frames``).

    Keys: ``n_frames``, ``n_atoms``; ``e_mae``, ``e_rmse`` (eV), ``e_mae_atom``, ``e_rmse_atom``
    (eV/atom); over free atoms ``n_free``, ``f_mae``, ``f_rmse`` (eV/A, components) and ``f_cos``
    (mean per-atom cosine similarity); with stress labels ``n_stress``, ``s_mae``, ``s_rmse``
    (eV/A^3, Voigt components). Force / stress keys are absent when nothing qualifies.
    """
    if frames is None:
        sel = np.ones(pred.num_frames, dtype=bool)
    else:
        arr = np.asarray(frames)
        sel = arr.astype(bool) if arr.dtype == bool else np.isin(np.arange(pred.num_frames), arr)
    e_err = (pred.energy - pred.energy_ref)[sel]
    n = pred.num_atoms[sel].astype(np.float64)
    res: dict[str, float | int] = {"n_frames": int(sel.sum()), "n_atoms": int(n.sum())}
    if not sel.any():
        return res
    res.update(
        e_mae=float(np.mean(np.abs(e_err))),
        e_rmse=float(np.sqrt(np.mean(e_err**2))),
        e_mae_atom=float(np.mean(np.abs(e_err / n))),
        e_rmse_atom=float(np.sqrt(np.mean((e_err / n) ** 2))),
    )
    atoms = sel[pred.frame] & pred.free
    res["n_free"] = int(atoms.sum())
    if atoms.any():
        fp, fr = pred.forces[atoms], pred.forces_ref[atoms]
        diff = fp - fr
        cos = np.sum(fp * fr, axis=1) / np.maximum(np.linalg.norm(fp, axis=1) * np.linalg.norm(fr, axis=1), _COS_EPS)
        res.update(
            f_mae=float(np.mean(np.abs(diff))),
            f_rmse=float(np.sqrt(np.mean(diff**2))),
            f_cos=float(np.mean(cos)),
        )
    has_stress = sel & np.isfinite(pred.stress_ref).all(1) & np.isfinite(pred.stress).all(1)
    res["n_stress"] = int(has_stress.sum())
    if has_stress.any():
        s_err = pred.stress[has_stress] - pred.stress_ref[has_stress]
        res.update(s_mae=float(np.mean(np.abs(s_err))), s_rmse=float(np.sqrt(np.mean(s_err**2))))
    return res


def grouped_metrics(pred: Predictions, by: Iterable[str]) -> dict[str, dict[str, dict[str, float | int]]]:
    """``{key: {value: metrics}}`` for each ``info`` key in ``by`` (values sorted); keys that no
    frame carries are left out with a warning."""
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for key in by:
        labels = np.array(pred.group_labels(key), dtype=object)
        if pred.num_frames and all(label == _MISSING for label in labels):
            log.warning("no frame has info key %r; not grouping by it", key)
            continue
        out[key] = {str(v): compute_metrics(pred, labels == v) for v in sorted(set(labels.tolist()))}
    return out


def evaluate_samples(
    model: Equiformer, samples: Sequence[Sample], batch_size: int, device: torch.device | str, dtype: torch.dtype | str
) -> dict[str, float]:
    """The trainer's validation numbers: ``e_mae_atom``, ``f_mae`` (free atoms; NaN if none) and
    ``s_mae`` (when some frame has a stress label)."""
    m = compute_metrics(predict_samples(model, samples, batch_size, device, dtype))
    res = {"e_mae_atom": float(m.get("e_mae_atom", math.nan)), "f_mae": float(m.get("f_mae", math.nan))}
    if "s_mae" in m:
        res["s_mae"] = float(m["s_mae"])
    return res


# ----------------------------------------------------------------------------- plots
def _parity_axes(ax: Any, ref: np.ndarray, pred: np.ndarray, label: str, unit: str, mae: float) -> None:
    lo = float(min(ref.min(), pred.min()))
    hi = float(max(ref.max(), pred.max()))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k-", lw=0.8, zorder=0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"reference {label} ({unit})")
    ax.set_ylabel(f"predicted {label} ({unit})")
    ax.text(0.04, 0.96, f"MAE {mae:.4g} {unit}\nn = {ref.size}", transform=ax.transAxes, va="top",
            bbox=dict(boxstyle="round", fc="white", alpha=0.8))
    ax.grid(True, alpha=0.3)


def plot_parity(pred: Predictions, out: str | os.PathLike, color_by: str | None = None, title: str = "") -> list[Path]:
    """Parity plots (PNG, matplotlib Agg) of energy per atom, free-atom force components and (if
    any) stress components into folder ``out``; points of the energy plot are coloured by the
    ``info`` key ``color_by`` when it has at most 12 values. Returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if pred.num_frames == 0:
        return written
    metrics = compute_metrics(pred)

    # energy per atom, optionally coloured by a group key
    fig = new_figure((5.5, 5.2))
    ax = fig.subplots()
    e_ref = pred.energy_ref / pred.num_atoms
    e_pred = pred.energy / pred.num_atoms
    labels = pred.group_labels(color_by) if color_by else None
    values = sorted(set(labels)) if labels else []
    if labels and 1 < len(values) <= 12:
        arr = np.array(labels, dtype=object)
        for v in values:
            m = arr == v
            ax.scatter(e_ref[m], e_pred[m], s=6, alpha=0.6, label=f"{v} ({int(m.sum())})", rasterized=True)
        ax.legend(title=color_by, fontsize=7, loc="lower right", markerscale=2)
    else:
        ax.scatter(e_ref, e_pred, s=6, alpha=0.6, rasterized=True)
    _parity_axes(ax, e_ref, e_pred, "energy per atom", "eV/atom", float(metrics["e_mae_atom"]))
    ax.set_title(f"{title} energy".strip())
    fig.tight_layout()
    path = out / "parity_energy.png"
    save_figure(fig, path)
    written.append(path)

    if "f_mae" in metrics:
        fig = new_figure((5.5, 5.2))
        ax = fig.subplots()
        f_ref, f_pred = pred.forces_ref[pred.free], pred.forces[pred.free]
        for c, name in enumerate("xyz"):
            ax.scatter(f_ref[:, c], f_pred[:, c], s=2, alpha=0.3, label=f"F{name}", rasterized=True)
        ax.legend(fontsize=7, loc="lower right", markerscale=4)
        _parity_axes(ax, f_ref, f_pred, "force component", "eV/A", float(metrics["f_mae"]))
        ax.set_title(f"{title} forces (free atoms, cos {metrics['f_cos']:.3f})".strip())
        fig.tight_layout()
        path = out / "parity_forces.png"
        save_figure(fig, path)
        written.append(path)

    if "s_mae" in metrics:
        fig = new_figure((5.5, 5.2))
        ax = fig.subplots()
        rows = np.isfinite(pred.stress_ref).all(1) & np.isfinite(pred.stress).all(1)
        s_ref, s_pred = pred.stress_ref[rows], pred.stress[rows]
        for c, name in enumerate(("xx", "yy", "zz", "yz", "xz", "xy")):
            ax.scatter(s_ref[:, c], s_pred[:, c], s=6, alpha=0.5, label=name, rasterized=True)
        ax.legend(fontsize=7, loc="lower right", ncol=2, markerscale=2)
        _parity_axes(ax, s_ref, s_pred, "stress", "eV/A^3", float(metrics["s_mae"]))
        ax.set_title(f"{title} stress (3D-periodic frames)".strip())
        fig.tight_layout()
        path = out / "parity_stress.png"
        save_figure(fig, path)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- entry points
def evaluate(
    checkpoint_or_model: Equiformer | str | os.PathLike,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    batch_size: int = 16,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    by: Iterable[str] = DEFAULT_BY,
    out: str | os.PathLike | None = None,
    max_frames: int | None = None,
    progress: bool = False,
    return_predictions: bool = False,
    keys: LabelKeys | None = None,
    executor: Any = None,
    batches_per_task: int = 8,
) -> dict[str, Any] | tuple[dict[str, Any], Predictions]:
    """Metrics of a model (an :class:`Equiformer`, a checkpoint path or a shipped name) on one or
    more labelled files or databases (extxyz, ASE db or URL, ``.aselmdb``, any ``ase.io`` format;
    labels under ``keys``, see :class:`~equiformer_calc.data.readers.LabelKeys`).

    Returns ``{"checkpoint", "data", "dtype", "units", "overall": metrics, "groups": {key: {value:
    metrics}}}`` (see :func:`compute_metrics` for the metric keys); with several files, group
    key ``"file"`` tells them apart. ``max_frames`` keeps the first frames of each file. With
    ``out``, writes ``out/metrics.json`` and the parity PNGs (listed under ``"files"``). With
    ``return_predictions`` the :class:`Predictions` are returned too. ``executor`` /
    ``batches_per_task``: fan the model batches out (see :func:`predict_samples`).
    """
    by = list(by)
    model, ckpt = load_model(checkpoint_or_model)
    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not paths:
        raise ValueError("no data files given")
    samples: list[Sample] = []
    for path in paths:
        part = read_samples(path, model.cutoff, progress=progress, keys=keys)
        if max_frames:
            part = part[:max_frames]
        for s in part:
            s.info = {**s.info, FILE_KEY: Path(path).name}
        samples += part
    log.info("evaluating %s on %d frames from %d file(s)", ckpt or "an in-memory model", len(samples), len(paths))
    pred = predict_samples(model, samples, batch_size=batch_size, device=device, dtype=dtype, progress=progress,
                           executor=executor, batches_per_task=batches_per_task)
    keys = list(dict.fromkeys(([FILE_KEY] if len(paths) > 1 else []) + list(by)))
    result: dict[str, Any] = {
        "checkpoint": ckpt,
        "data": [str(p) for p in paths],
        "dtype": str(resolve_dtype(dtype)).replace("torch.", ""),
        "units": {"energy": "eV", "energy_per_atom": "eV/atom", "forces": "eV/A", "stress": "eV/A^3"},
        "force_convention": "free atoms only (FixAtoms / 'fixed' excluded); f_cos: mean per-atom cosine similarity",
        "overall": compute_metrics(pred),
        "groups": grouped_metrics(pred, keys),
    }
    if out is not None:
        out = Path(out)
        title = Path(ckpt).stem if ckpt else ""
        files = plot_parity(pred, out, color_by=next(iter(by), None), title=title)
        result["files"] = [p.name for p in files] + ["metrics.json"]
        write_json(result, out / "metrics.json")
        log.info("wrote %s", ", ".join(str(out / f) for f in result["files"]))
    return (result, pred) if return_predictions else result


def format_table(result: dict[str, Any]) -> str:
    """A short human-readable table of the overall and per-group metrics."""

    def row(name: str, m: dict[str, Any]) -> str:
        def fmt(key: str, factor: float = 1.0, spec: str = ".2f") -> str:
            v = m.get(key)
            return format(v * factor, spec) if isinstance(v, (int, float)) and v is not None else "-"

        return (f"{name:<32} {m.get('n_frames', 0):>6} {fmt('e_mae_atom', 1000):>12} {fmt('f_mae', 1, '.4f'):>10}"
                f" {fmt('f_cos', 1, '.4f'):>7} {fmt('s_mae', 1000, '.3f'):>12}")

    lines = [f"{'subset':<32} {'frames':>6} {'E meV/atom':>12} {'F eV/A':>10} {'F cos':>7} {'S meV/A^3':>12}"]
    lines.append(row("overall", result["overall"]))
    for key, groups in result.get("groups", {}).items():
        for value, m in groups.items():
            lines.append(row(f"{key}={value}", m))
    return "\n".join(lines)
