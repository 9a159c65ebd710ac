"""Training: energy + force (+ stress) loss, AdamW with warm-up + cosine, EMA, clipping,
periodic validation keeping the best checkpoint, resumable state, optional data parallelism.

``equiformer-calc train CONFIG.yaml`` runs :func:`train`. Resume: rerun the same command; the
run continues from ``OUT/state.pt`` (same step, optimiser, EMA, data order and RNG). Every file is
written atomically. Data-parallel: ``torchrun --nproc_per_node=2 -m equiformer_calc.cli train
CONFIG.yaml`` (PyTorch DDP; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint import save_checkpoint
from ..io import atomic_path, new_figure, save_figure, write_text_atomic
from ..model import Equiformer
from ..predictor import compute, voigt
from ..runtime import configure_runtime, set_threads
from ..data.readers import LabelKeys
from .data import Sample, collate, read_samples
from .evaluate import evaluate_samples

__all__ = ["TrainConfig", "train", "fit_energy_references", "pair_repulsion_labels"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a training run needs; read from YAML (unknown keys are an error)."""

    # a file (or database URL), or a list of them whose frames are concatenated in order
    train: str | list[str]
    val: str | list[str]
    out: str = "runs/equiformer"
    elements: list[str] = field(default_factory=lambda: ["H", "C", "N", "O", "Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"])
    preset: str = "small"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset
    cutoff: float = 5.0
    seed: int = 0
    batch_size: int = 8
    max_steps: int = 10000
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    warmup_steps: int = 200
    weight_decay: float = 1e-3
    energy_weight: float = 2.0  # on per-atom energy error (eV/atom)^2
    force_weight: float = 1.0  # on force component error (eV/A)^2
    stress_weight: float = 1.0  # on stress component error (100 * eV/A^3)^2
    ema_decay: float = 0.995
    grad_clip: float = 10.0
    val_every: int = 250
    max_val: int = 1000  # val frames used: the first max_val of each val file
    threads: int = 0  # 0: torch default
    device: str = "cpu"
    dtype: str = "float32"
    max_train: int = 0  # 0: all frames
    time_limit_s: float = 0.0  # stop (resumably) after this wall time; 0: none
    # start from a trained checkpoint (shipped name or path): its architecture and weights, a new energy
    # reference fit on this data; preset/model/elements above are then ignored
    init_from: str = ""
    init_new_elements: bool = False  # grow the checkpoint by elements it lacks instead of refusing
    # where the labels are in train/val files (extxyz info/arrays, db key-value pairs/data): e.g.
    # MACE-style REF_energy / REF_forces / REF_stress; see equiformer_calc.data.readers
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        import yaml

        with open(path) as fh:
            try:
                raw = yaml.safe_load(fh) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(raw, dict):
            raise ValueError(
                f"{path} must be a YAML mapping of TrainConfig fields (key: value lines such as 'train: data.xyz'), "
                f"got a {type(raw).__name__}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"{path}: unknown training config keys {sorted(unknown)}")
        base = Path(path).resolve().parent
        for key in ("train", "val"):
            if key in raw:
                paths = [str(_resolve(p, base)) for p in _as_list(raw[key], key, path)]
                raw[key] = paths if isinstance(raw[key], list) else paths[0]
        return cls(**raw)


def _as_list(value: Any, key: str, path: str | Path) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"{path}: '{key}' must be a file path or a non-empty list of file paths, got {value!r}")


def _resolve(path: str, base: Path) -> str:
    """A relative path that does not exist from the working directory is taken relative to the config."""
    if not Path(path).is_absolute() and not Path(path).exists() and (base / path).exists():
        return str(base / path)
    return path


def _read_all(paths: str | list[str], cutoff: float, keys: LabelKeys, progress: bool, limit: int | None = None) -> list[Sample]:
    """Samples of every file in ``paths`` in order (the first ``limit`` of each unless None)."""
    out: list[Sample] = []
    for path in [paths] if isinstance(paths, str) else paths:
        samples = read_samples(path, cutoff, progress=progress, keys=keys)
        out += samples if limit is None else samples[:limit]
    return out


# ----------------------------------------------------------------------------- helpers
def pair_repulsion_labels(samples: list[Sample], model: Equiformer) -> tuple[np.ndarray, np.ndarray]:
    """Energy (S,) and forces (sum N, 3) of the model's fixed pair repulsion on every sample (zeros
    when it has none), in float64: the network is trained on the labels minus these."""
    energies = np.zeros(len(samples))
    forces = [np.zeros_like(s.forces) for s in samples]
    if model.pair is None:
        return energies, np.concatenate(forces) if forces else np.zeros((0, 3))
    for k, s in enumerate(samples):
        g = s.graph.to(dtype=torch.float64)
        positions = g.positions.detach().requires_grad_(True)
        e = model.pair_energy(g.numbers, positions, g.edge_index, g.shifts, g.cell, g.batch, g.num_graphs).sum()
        if e.requires_grad:
            (grad,) = torch.autograd.grad(e, positions)
            forces[k] = -grad.numpy()
        energies[k] = float(e.detach())
    return energies, np.concatenate(forces)


def fit_energy_references(
    samples: list[Sample], elements: list[str], model: Equiformer | None = None
) -> tuple[np.ndarray, float, float]:
    """Per-element reference energies by least squares (E ~ sum_Z n_Z e_Z), the force RMS as the
    energy scale, and the mean per-atom residual as the shift. With a ``model`` that has a pair
    repulsion, all three are fitted to the labels minus that fixed term (what the network learns)."""
    from ase.data import atomic_numbers

    index = {atomic_numbers[s]: k for k, s in enumerate(elements)}
    counts = np.zeros((len(samples), len(elements)))
    for r, s in enumerate(samples):
        for z, c in zip(*np.unique(s.graph.numbers.numpy(), return_counts=True)):
            counts[r, index[int(z)]] = c
    energies = np.array([s.energy for s in samples])
    forces = np.concatenate([s.forces for s in samples])
    if model is not None:
        pair_e, pair_f = pair_repulsion_labels(samples, model)
        energies = energies - pair_e
        forces = forces - pair_f
    present = counts.sum(0) > 0
    refs = np.zeros(len(elements))
    sol, *_ = np.linalg.lstsq(counts[:, present], energies, rcond=None)
    refs[present] = sol
    residual = (energies - counts @ refs) / counts.sum(1)
    scale = float(np.sqrt(np.mean(forces**2))) or 1.0
    return refs, scale, float(residual.mean())


def _check_elements(samples: list[Sample], elements: list[str]) -> None:
    """Every element of the data is one the model is configured for (ValueError naming the others)."""
    from ase.data import atomic_numbers, chemical_symbols

    allowed = {atomic_numbers[s] for s in elements}
    present: set[int] = set()
    for sample in samples:
        present.update(int(z) for z in np.unique(sample.graph.numbers.numpy()))
    missing = sorted(present - allowed)
    if missing:
        raise ValueError(
            f"the data contain {', '.join(chemical_symbols[z] for z in missing)}, which the config's elements "
            f"({', '.join(elements)}) do not include; add them to 'elements'"
        )


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _EMA:
    """Exponential moving average of the parameters (evaluated and saved as the model)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def swap_into(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        return backup


def _losses(model, batch, cfg: TrainConfig, create_graph: bool) -> tuple[torch.Tensor, dict[str, float]]:
    want_stress = cfg.stress_weight > 0 and bool(batch.has_stress.any()) and bool(batch.graph.pbc.all())
    out = compute(model, batch.graph, forces=True, stress=want_stress, create_graph=create_graph)
    e_err = (out["energy"] - batch.energy) / batch.num_atoms
    f_err = out["forces"] - batch.forces
    loss = cfg.energy_weight * e_err.pow(2).mean().to(f_err.dtype) + cfg.force_weight * f_err.pow(2).mean()
    metrics = {
        "e_mae_atom": float(e_err.detach().abs().mean()),
        "f_mae": float(f_err.detach()[batch.free].abs().mean()) if bool(batch.free.any()) else float("nan"),
    }
    if want_stress:
        s_err = (voigt(out["stress"]) - batch.stress)[batch.has_stress]
        loss = loss + cfg.stress_weight * (100 * s_err).pow(2).mean()
        metrics["s_mae"] = float(s_err.detach().abs().mean())
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def _epoch_order(n: int, stress_frames: np.ndarray | None, batch: int, gen: torch.Generator) -> torch.Tensor:
    """A random order of the ``n`` training frames for one epoch.

    ``stress_frames`` (bool per frame: 3D-periodic with a stress label) is ``None`` when stress is
    not trained, and the order is a plain permutation. Otherwise every full run of ``batch`` indices
    holds either stress frames only or none: the stress term needs every graph of a batch to be
    periodic in 3D (:func:`~equiformer_calc.predictor.compute`), and randomly mixed batches of 4 from
    data with 5 % bulk frames almost never are (0.05^4 ~ 1e-5), so stress went untrained. The
    leftovers of both kinds (fewer than one batch each) close the epoch."""
    perm = torch.randperm(n, generator=gen)
    if stress_frames is None or not stress_frames.any() or stress_frames.all():
        return perm
    mask = torch.from_numpy(stress_frames)[perm]
    chunks, rest = [], []
    for group in (perm[mask], perm[~mask]):
        full = len(group) // batch * batch
        chunks += list(group[:full].split(batch))
        rest.append(group[full:])
    shuffled = [chunks[k] for k in torch.randperm(len(chunks), generator=gen).tolist()]
    return torch.cat([*shuffled, *rest])


def _sort_for_val(samples: list[Sample]) -> list[Sample]:
    # periodic-in-3D frames batched together so stress is evaluated for them
    return sorted(samples, key=lambda s: bool(s.graph.pbc.all()))


# ----------------------------------------------------------------------------- the run
@dataclasses.dataclass
class _Process:
    """Where this process trains: its rank among ``world`` processes (DDP when ``distributed``)
    and its device."""

    distributed: bool
    rank: int
    world: int
    device: torch.device


def _start_process(cfg: TrainConfig) -> _Process:
    """Set-up: the process group (under torchrun), threads and device of this process."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if distributed:
        backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
    set_threads(cfg.threads)
    # one GPU per process of this node: LOCAL_RANK (torchrun sets it), not the global rank, with --nnodes > 1
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device(cfg.device if not cfg.device.startswith("cuda") or not distributed else f"cuda:{local_rank}")
    return _Process(distributed, rank, world, device)


def _initial_model(cfg: TrainConfig, train_samples: list[Sample], dtype: torch.dtype) -> Equiformer:
    """Set-up: the model to train, from ``init_from`` (fine-tuning) or a preset with energy
    references fitted to the training frames."""
    if cfg.init_from:
        from .finetune import data_elements, init_from_checkpoint, refit_energy_references

        model = init_from_checkpoint(cfg.init_from, data_elements(train_samples), cfg.init_new_elements)
        if model.config.cutoff != cfg.cutoff:
            raise ValueError(f"init_from {cfg.init_from!r} has cutoff {model.config.cutoff}, the config {cfg.cutoff}")
        model = model.to(dtype=dtype)
        refit_energy_references(model, train_samples)
        log.info("initialised from %s", cfg.init_from)
        return model
    model = Equiformer.from_preset(cfg.preset, elements=cfg.elements, cutoff=cfg.cutoff, **cfg.model)
    refs, scale, shift = fit_energy_references(train_samples, cfg.elements, model)
    with torch.no_grad():
        model.atomic_energies.copy_(torch.from_numpy(refs))
        model.scale.fill_(scale)
        model.shift.fill_(shift)
    return model


@dataclasses.dataclass
class _Progress:
    """The resumable state of a run besides the weights: position in the epoch order, best
    validation loss, history rows, and the generator of the epoch orders."""

    order: torch.Tensor
    order_gen: torch.Generator
    step: int = 0
    epoch: int = 0
    best: float = float("inf")
    cursor: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _restore(state_path: Path, out: Path, model: Equiformer, optimizer: torch.optim.Optimizer, ema: "_EMA",
             progress: _Progress, device: torch.device) -> None:
    """Resume: weights, optimiser, EMA, position and RNG states from ``state.pt``."""
    state = torch.load(state_path, weights_only=True, map_location=device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    ema.shadow = state["ema"]
    progress.step, progress.epoch = int(state["step"]), int(state["epoch"])
    progress.best, progress.cursor = float(state["best"]), int(state["cursor"])
    # RNG states must be CPU byte tensors whatever map_location did to them
    progress.order = state["order"].cpu()
    progress.order_gen.set_state(state["order_gen"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    # the history saved with the state (one atomic file), not a possibly newer/older history.json
    if "history" in state:
        progress.history = json.loads(state["history"])
    elif (out / "history.json").exists():
        progress.history = json.loads((out / "history.json").read_text())
    log.info("resumed from step %d (best validation loss %.4g)", progress.step, progress.best)


def _save_state(state_path: Path, out: Path, model: Equiformer, optimizer: torch.optim.Optimizer, ema: "_EMA",
                progress: _Progress, device: torch.device) -> None:
    """Checkpoint of the whole run (one atomic file), and its history."""
    p = progress
    _atomic_torch_save(
        {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.shadow,
            "step": p.step, "epoch": p.epoch, "best": p.best, "cursor": p.cursor, "order": p.order,
            "order_gen": p.order_gen.get_state(), "torch_rng": torch.get_rng_state(),
            "history": json.dumps(p.history),
            **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
        },
        state_path,
    )
    write_text_atomic(out / "history.json", json.dumps(p.history))


def _time_is_up(cfg: TrainConfig, start: float, proc: _Process) -> bool:
    """``time_limit_s`` reached (every rank follows rank 0's clock, or the others would wait forever)."""
    stop = time.perf_counter() - start > cfg.time_limit_s
    if proc.distributed:
        flag = torch.tensor([float(stop)], device=proc.device)
        dist.broadcast(flag, src=0)
        stop = bool(flag.item())
    return stop


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns the summary written to ``OUT/summary.json``."""
    configure_runtime()
    proc = _start_process(cfg)
    rank, world, device = proc.rank, proc.world, proc.device
    dtype = getattr(torch, cfg.dtype)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)

    keys = LabelKeys(cfg.energy_key, cfg.forces_key, cfg.stress_key)
    train_samples = _read_all(cfg.train, cfg.cutoff, keys, progress=rank == 0)
    if cfg.max_train:
        train_samples = train_samples[: cfg.max_train]
    val_samples = _sort_for_val(_read_all(cfg.val, cfg.cutoff, keys, progress=rank == 0, limit=cfg.max_val))
    _check_elements(train_samples + val_samples, cfg.elements)
    if rank == 0:  # the inputs are valid: only now is anything written
        out.mkdir(parents=True, exist_ok=True)

    model = _initial_model(cfg, train_samples, dtype)
    degrees = [s.graph.num_edges / s.num_atoms for s in train_samples[:2000]]
    model = model.to(device=device, dtype=dtype)
    log.info("model: %s; %d train / %d val frames; mean degree %.1f", model.extra_repr(), len(train_samples),
             len(val_samples), float(np.mean(degrees)))
    net: torch.nn.Module = model
    if proc.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if device.type == "cpu" else [device])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = _EMA(model, cfg.ema_decay)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    # frames whose stress the loss uses, batched only with each other (None: stress not trained)
    stress_frames = (
        np.array([s.stress is not None and bool(s.graph.pbc.all()) for s in train_samples])
        if cfg.stress_weight > 0 else None
    )
    run = _Progress(_epoch_order(len(train_samples), stress_frames, cfg.batch_size * world, order_gen), order_gen)
    state_path = out / "state.pt"
    if state_path.exists():
        _restore(state_path, out, model, optimizer, ema, run, device)

    from ..io import progress as tqdm  # live bar on a terminal, plain lines in a log

    # in a log file (not a terminal) the bar is redrawn every 30 s instead of every step
    bar = tqdm(total=cfg.max_steps, initial=run.step, desc="train", disable=rank != 0, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    start = time.perf_counter()
    # wall time of the earlier sessions of this run (the clock restarts at every resume)
    wall_before = run.history[-1]["wall_s"] if run.history else 0.0
    running: dict[str, list[float]] = {}
    stop_reason = "max_steps"
    while run.step < cfg.max_steps:
        # next global batch; each rank takes its share
        if run.cursor + cfg.batch_size * world > len(run.order):
            run.order = _epoch_order(len(train_samples), stress_frames, cfg.batch_size * world, order_gen)
            run.cursor, run.epoch = 0, run.epoch + 1
        idx = run.order[run.cursor + rank * cfg.batch_size : run.cursor + (rank + 1) * cfg.batch_size].tolist()
        run.cursor += cfg.batch_size * world
        batch = collate([train_samples[i] for i in idx], device, dtype)
        for g in optimizer.param_groups:
            g["lr"] = cfg.lr * _lr_factor(run.step, cfg)
        model.train()
        loss, metrics = _losses(net, batch, cfg, create_graph=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        optimizer.step()
        ema.update(model, run.step)
        run.step += 1
        for k, v in metrics.items():
            running.setdefault(k, []).append(v)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3g}", f_mae=f"{metrics['f_mae']:.3f}", refresh=False)

        if run.step % cfg.val_every == 0 or run.step == cfg.max_steps:
            row = {"lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm}
            means = {f"train_{k}": float(np.mean(v)) for k, v in running.items()}
            running = {}
            _validate(cfg, model, ema, val_samples, run, row, means, lambda: time.perf_counter() - start + wall_before,
                      len(train_samples), rank == 0, device, dtype)
            if rank == 0:
                _save_state(state_path, out, model, optimizer, ema, run, device)
            if cfg.time_limit_s and _time_is_up(cfg, start, proc):
                stop_reason = "time_limit"
                break
    bar.close()
    summary = {"steps": run.step, "epochs": run.epoch, "best_val_loss": run.best, "stop_reason": stop_reason,
               "last": run.history[-1] if run.history else None}
    if rank == 0:
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    if proc.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _validate(cfg: TrainConfig, model: Equiformer, ema: "_EMA", val_samples: list[Sample], run: _Progress,
              step_row: dict[str, Any], train_means: dict[str, float], wall_s: Callable[[], float], n_train: int,
              writer: bool, device: torch.device, dtype: torch.dtype) -> None:
    """Validation with the EMA weights: one history row (``step_row``: lr and gradient norm of the
    last step; ``train_means`` since the last row; ``wall_s()``: the run's wall time, read after the
    validation), and (``writer``: rank 0) the log line and the best / last checkpoints; the training
    weights are back in ``model`` afterwards."""
    out = Path(cfg.out)
    model.eval()
    backup = ema.swap_into(model)
    val = evaluate_samples(model, val_samples, 16, device, dtype)
    # model selection: errors in units of the targets (3 meV/atom, 0.03 eV/A)
    val_loss = val["e_mae_atom"] / 0.003 + val["f_mae"] / 0.03
    row = {"step": run.step, "epoch": run.epoch, **step_row, "wall_s": wall_s(), **train_means,
           **{f"val_{k}": v for k, v in val.items()}}
    run.history.append(row)
    if writer:
        log.info("step %d: val E MAE %.2f meV/atom, F MAE %.4f eV/A%s", run.step, 1000 * val["e_mae_atom"],
                 val["f_mae"], f", S MAE {val['s_mae']:.2e} eV/A^3" if "s_mae" in val else "")
        if val_loss < run.best:
            run.best = val_loss
            save_checkpoint(model, out / "best.safetensors", _provenance(cfg, row, n_train))
        save_checkpoint(model, out / "last.safetensors", _provenance(cfg, row, n_train))
        _write_history(out, run.history)
    model.load_state_dict(backup)


def _provenance(cfg: TrainConfig, row: dict[str, Any], n_train: int) -> dict[str, Any]:
    return {
        "training": {"config": dataclasses.asdict(cfg), "step": row["step"], "train_frames": n_train,
                     "wall_s": row["wall_s"], "torch": torch.__version__},
        "metrics": {k: v for k, v in row.items() if k.startswith("val_")},
    }


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))
    with atomic_path(out / "metrics.csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    plot_learning_curve(history, out / "learning_curve.png")


def plot_learning_curve(history: list[dict[str, Any]], path: Path) -> None:
    """Train/validation energy and force MAE against step (log scale) as a PNG."""
    steps = [r["step"] for r in history]
    fig = new_figure((10, 4))
    axes = fig.subplots(1, 2)
    for ax, key, unit, factor in ((axes[0], "e_mae_atom", "meV/atom", 1000), (axes[1], "f_mae", "eV/A", 1)):
        for split, style in (("train", "--"), ("val", "-")):
            ys = [r.get(f"{split}_{key}", float("nan")) * factor for r in history]
            ax.plot(steps, ys, style, label=split)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{key.replace('_', ' ')} ({unit})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("Equiformer training (EMA weights on validation)")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
