"""Every benchmark of the package, side by side in one process, with medians and ratios.

Run::

    python benchmarks/run_all.py                 # the full run (~9 min on 2 CPU cores)
    python benchmarks/run_all.py --quick         # reduced sizes, < ~3 min (a smoke run)
    python benchmarks/run_all.py --out benchmarks/results.json   # JSON; RESULTS.md beside it

Sections (keys of the JSON file):

1. ``overhead``: time of a :func:`~gan_dissect_callbacks.engines.dissection.dissect` pass ÷ time
   of the generator + segmenter forward passes on the same samples (the floor no dissection can
   go below), for the shipped toy GAN (3 layers) and two paper-scale settings (512 units at 8×8
   upsampled to 64×64, 150 concepts): the ProGAN-like generator of ``examples/progan_like.py`` at
   64 px with random weights, and a synthetic generator of that shape whose forward pass costs
   almost nothing (the analysis alone). Target: ≤ 1.5×.
2. ``reference_workload``: the MISSION §6 workload of ``bench_unit_concept_iou.py`` (512 units,
   32 concepts, 64×64, batch 32, activations and masks given): samples/s of the metric alone,
   ÷ the 2020 reference's 4.9 samples/s (goal ≥ 30×; the same stream at 150 concepts: ≥ 20
   samples/s), IoU error against the exact in-memory computation (goal ≤ 0.005), peak memory.
3. ``throughput``: samples/s and peak memory of whole dissection passes; the metric's state bytes
   after each batch streamed (flat once the levels are calibrated) and against units × concepts
   (``8·U·(L+1)·(C+1) + 4·U·L + 8·C + 16``).
4. ``training``: the training overhead of each callback at its default cadence on the demo. The
   analysis time is what the callback's budget is charged on a short run that triggers it (its
   own time and its part of a pass of samples shared with the analyses due at the same step;
   Lightning's ``SimpleProfiler`` times the per-batch hook, a clock callback every training
   batch), amortised over the default cadence:
   ``(analysis / every_n_train_steps + per-batch hook) / batch time``, without a budget
   (``max_overhead=None``) and at the cadence the default budget would stretch it to.
   Targets: see :data:`NO_BUDGET_TARGETS_PCT`; ≤ 5% with the budget. Peak RSS of each
   configuration's training run, and what it adds to plain training, in fresh processes.
   ``--quick`` shrinks the analyses (fewer samples), so its percentages are not the defaults'.
5. ``scaling`` and ``profile``: samples/s of the metric's update over batch size, units, concepts
   and mask size (one at a time around 32 × 512 units × 32 concepts × 64×64); where a
   dissection pass spends its time (cProfile: its stages and top ten functions / ops); what was
   done to make it fast.
6. ``gpu``: sections 1–3 on CUDA when a GPU is present; otherwise skipped, with the reason.

Timings run in this process one after the other, so they share the machine's load (the load
average is recorded before each section). Peak resident memory is measured in fresh child
processes that run only that workload, since a process's high-water mark cannot be reset.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import inspect
import json
import logging
import math
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.profilers import SimpleProfiler
from torch import Tensor, nn

from gan_dissect_callbacks.callbacks import (
    ArtifactPruningCallback,
    DissectionCallback,
    InterventionCallback,
    QualityMonitor,
)
from gan_dissect_callbacks.callbacks._schedule import ScheduledAnalysis
from gan_dissect_callbacks.demos.pretrained import load_pretrained_scene_gan
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
from gan_dissect_callbacks.demos.train import DEMO_LAYERS, SceneDataModule, default_callbacks
from gan_dissect_callbacks.engines.dissection import _merge_topk, dissect
from gan_dissect_callbacks.engines.sampling import (
    iterate_samples,
    resolve_latent_sampler,
    rng_isolated,
)
from gan_dissect_callbacks.functional import _counting
from gan_dissect_callbacks.functional.unit_concept import (
    _unit_concept_update,
    unit_concept_compute,
    unit_concept_levels,
)
from gan_dissect_callbacks.instrumentation import capture_activations, eval_mode
from gan_dissect_callbacks.metrics.unit_concept_iou import UnitConceptIoU
from gan_dissect_callbacks.segmenters.module import native_bf16

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (HERE, ROOT / "examples"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import bench_unit_concept_iou as reference  # noqa: E402
from bench_analysis_cycle import charged_by_step  # noqa: E402
from progan_like import ProGANLike, random_ade20k_segmenter  # noqa: E402

#: The 2020 reference pipeline on the §6 workload, 2 CPU threads (MISSION §6).
REFERENCE_SAMPLES_PER_S = 4.9
OVERHEAD_TARGET = 1.5
SPEEDUP_GOAL = 30.0
#: Samples/s of the §6 stream at 150 concepts (ADE20K's vocabulary size).
CONCEPTS_150_GOAL = 20.0
IOU_ERROR_GOAL = 0.005
TRAINING_TARGET_PCT = 5.0
#: Targets without a budget (``max_overhead=None``), at cadence 500 and default settings.
NO_BUDGET_TARGETS_PCT = {
    "DissectionCallback": 3.0,
    "InterventionCallback": 10.0,
    "ArtifactPruningCallback": 15.0,
    "QualityMonitor": 3.0,
    "demo default_callbacks (all four)": 10.0,
}
DEMO_CONCEPTS = ("sun", "cloud", "tree", "house")


@dataclass(frozen=True)
class Settings:
    """Sizes of one run; see :data:`PRESETS`."""

    preset: str
    repeats: int  # timed repeats of each toy / synthetic pass (medians reported)
    toy_samples: int
    toy_batch: int
    paper_samples: int  # ProGAN-like: its forward pass dominates, so fewer samples and repeats
    paper_batch: int
    paper_repeats: int  # also the synthetic paper-scale case's
    paper_resolution: int
    synthetic_samples: int
    reference_samples: int
    reference_repeats: int
    train_batches: int  # training batches per measured run (the analysis runs at the last one)
    train_rounds: int
    analysis_sizes: str  # "defaults", or smaller analyses for quick runs: "reduced", "tiny"
    scaling_batches: int
    batch_sizes: tuple[int, ...]
    unit_counts: tuple[int, ...]
    concept_counts: tuple[int, ...]
    mask_sizes: tuple[int, ...]
    profile_samples: int
    memory_progan: bool


PRESETS: dict[str, Settings] = {
    "full": Settings(
        preset="full",
        repeats=5,
        toy_samples=256,
        toy_batch=64,
        paper_samples=128,
        paper_batch=32,
        paper_repeats=3,
        paper_resolution=64,
        synthetic_samples=256,
        reference_samples=512,
        reference_repeats=3,
        train_batches=60,
        train_rounds=1,
        analysis_sizes="defaults",
        scaling_batches=3,
        batch_sizes=(8, 16, 32, 64, 128),
        unit_counts=(64, 128, 256, 512, 1024),
        concept_counts=(8, 32, 64, 150),
        mask_sizes=(32, 64, 128),
        profile_samples=128,
        memory_progan=True,
    ),
    "quick": Settings(
        preset="quick",
        repeats=2,
        toy_samples=256,
        toy_batch=64,
        paper_samples=32,
        paper_batch=16,
        paper_repeats=1,
        paper_resolution=64,
        synthetic_samples=128,
        reference_samples=256,
        reference_repeats=1,
        train_batches=10,
        train_rounds=1,
        analysis_sizes="reduced",
        scaling_batches=1,
        batch_sizes=(16, 64),
        unit_counts=(128, 512),
        concept_counts=(8, 150),
        mask_sizes=(32, 64),
        profile_samples=64,
        memory_progan=False,
    ),
    # The smallest sizes that still exercise every code path (the test suite's smoke test).
    "smoke": Settings(
        preset="smoke",
        repeats=1,
        toy_samples=64,
        toy_batch=32,
        paper_samples=8,
        paper_batch=8,
        paper_repeats=1,
        paper_resolution=32,
        synthetic_samples=32,
        reference_samples=64,
        reference_repeats=1,
        train_batches=4,
        train_rounds=1,
        analysis_sizes="tiny",
        scaling_batches=1,
        batch_sizes=(16,),
        unit_counts=(64,),
        concept_counts=(8,),
        mask_sizes=(32,),
        profile_samples=16,
        memory_progan=False,
    ),
}


# --------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn()``, with the device's queued work included."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB.

    Linux's ``VmHWM`` belongs to the running program; ``ru_maxrss`` would also count the parent's
    memory at the time of the fork (it survives ``exec``), so it is only the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _load() -> float:
    """The 1-minute load average (the machine's other work while a section ran)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else -1.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


class SyntheticPaperGenerator(nn.Module):
    """A generator of the paper's shape whose forward pass costs almost nothing.

    ``layer4``: latent → 512 units at 8×8 (one dense map, ReLU); ``output``: a 1×1 conv to RGB,
    bilinear to 64×64, ``tanh``. Dissecting ``layer4`` with a 150-concept segmenter at 64×64
    costs what the paper's setting costs, minus almost all of the generator: the overhead ratio
    it gives is the analysis alone against a nearly free floor (a worst case).
    """

    def __init__(
        self, latent_dim: int = 512, units: int = 512, side: int = 8, size: int = 64
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.units, self.side, self.size = units, side, size
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.layer4 = nn.Sequential(
                nn.Linear(latent_dim, units * side * side),
                nn.Unflatten(1, (units, side, side)),
                nn.ReLU(),
            )
            self.output = nn.Conv2d(units, 3, 1)

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, generator=generator).to(device)

    def forward(self, z: Tensor) -> Tensor:
        rgb = F.interpolate(self.output(self.layer4(z)), size=self.size, mode="bilinear")
        return torch.tanh(rgb)


@dataclass
class Case:
    """A model, the layers to dissect and a segmenter: one dissection setting."""

    name: str
    description: str
    model: nn.Module
    layers: list[str]
    segmenter: Any
    num_samples: int
    batch_size: int
    repeats: int


def _make_case(name: str, settings: Settings, device: torch.device) -> Case:
    if name == "toy":
        model: nn.Module = load_pretrained_scene_gan()
        segmenter: Any = load_toy_segmenter()
        precision = "bf16" if native_bf16(device) else "float32"
        description = f"shipped toy SceneGAN (32 px, trained), toy segmenter (in {precision})"
        layers = list(DEMO_LAYERS)
        samples, batch, repeats = settings.toy_samples, settings.toy_batch, settings.repeats
    elif name == "paper_progan":
        res = settings.paper_resolution
        model = ProGANLike(resolution=res, max_channels=512, latent_dim=512, seed=0)
        segmenter = random_ade20k_segmenter("module", output_size=res)
        description = (
            f"ProGAN-like generator at {res} px (random weights), layer4; random-weight "
            f"150-concept ADE20K conv segmenter at {res}×{res}"
        )
        layers = ["generator.layer4"]
        samples, batch = settings.paper_samples, settings.paper_batch
        repeats = settings.paper_repeats
    elif name == "paper_synthetic":
        model = SyntheticPaperGenerator()
        segmenter = random_ade20k_segmenter("module", output_size=64)
        description = (
            "synthetic generator (dense latent → 512 units at 8×8 → RGB 64 px, nearly free), "
            "layer4; random-weight 150-concept ADE20K conv segmenter at 64×64"
        )
        layers = ["layer4"]
        samples, batch = settings.synthetic_samples, settings.paper_batch
        repeats = settings.paper_repeats
    else:
        raise ValueError(f"Expected a case name, but got {name!r}.")
    model.to(device).eval()
    segmenter.module.to(device)
    return Case(name, description, model, layers, segmenter, samples, batch, repeats)


def _layer_shapes(case: Case) -> dict[str, Any]:
    """Units and featuremap side of each layer, and the masks' concepts and size."""
    sampler = resolve_latent_sampler(case.model)
    with torch.no_grad(), capture_activations(case.model, case.layers) as acts:
        images = case.model(sampler(2, torch.Generator().manual_seed(0)))
    masks = case.segmenter.segment(images)
    return {
        "layers": {
            name: {"units": int(acts[name].shape[1]), "featuremap": list(acts[name].shape[2:])}
            for name in case.layers
        },
        "concepts": int(masks.shape[1]),
        "mask_size": list(masks.shape[2:]),
        "image_size": list(images.shape[2:]),
    }


def forward_floor(model: nn.Module, segmenter: Any, num_samples: int, batch_size: int) -> None:
    """Generate and segment the samples a dissection sees: the cost no dissection avoids."""
    sampler = resolve_latent_sampler(model)
    device = next(model.parameters()).device
    with rng_isolated(device), eval_mode(model), torch.no_grad():
        for batch in iterate_samples(sampler, num_samples, batch_size, seed=0):
            segmenter.segment(model(batch.latents))


def _dissect(case: Case, num_samples: int | None = None) -> Any:
    return dissect(
        case.model,
        case.layers,
        case.segmenter,
        num_samples=case.num_samples if num_samples is None else num_samples,
        batch_size=case.batch_size,
        seed=0,
    )


# --------------------------------------------------------------------------- 1. overhead


def overhead_case(case: Case, device: torch.device) -> dict[str, Any]:
    """Median dissect time ÷ median forward-floor time, alternating the two passes."""
    # Warm up kernels and allocators on both passes (not timed).
    forward_floor(case.model, case.segmenter, case.batch_size, case.batch_size)
    _dissect(case, num_samples=case.batch_size)
    floor_s, dissect_s = [], []
    for _ in range(case.repeats):
        floor_s.append(
            _timed(
                lambda: forward_floor(
                    case.model, case.segmenter, case.num_samples, case.batch_size
                ),
                device,
            )
        )
        dissect_s.append(_timed(lambda: _dissect(case), device))
    floor, full = _median(floor_s), _median(dissect_s)
    ratio = full / floor
    return {
        "description": case.description,
        **_layer_shapes(case),
        "num_samples": case.num_samples,
        "batch_size": case.batch_size,
        "repeats": case.repeats,
        "forward_s": floor_s,
        "dissect_s": dissect_s,
        "forward_s_median": floor,
        "dissect_s_median": full,
        "analysis_s_median": full - floor,
        "ratio": ratio,
        "target": OVERHEAD_TARGET,
        "met": ratio <= OVERHEAD_TARGET,
        "dissect_samples_per_s": case.num_samples / full,
        "forward_samples_per_s": case.num_samples / floor,
        "analysis_ms_per_sample": 1000 * (full - floor) / case.num_samples,
    }


def overhead_section(settings: Settings, device: torch.device) -> dict[str, Any]:
    results = {}
    for name in ("toy", "paper_progan", "paper_synthetic"):
        case = _make_case(name, settings, device)
        results[name] = overhead_case(case, device)
        r = results[name]
        _log(
            f"[overhead] {name}: dissect {r['dissect_s_median']:.2f} s / forward "
            f"{r['forward_s_median']:.2f} s = {r['ratio']:.2f}x"
        )
    return results


# --------------------------------------------------------------------------- 2. §6 workload


def metric_buffer_bytes(metric: UnitConceptIoU) -> int:
    """Bytes of the batches the metric holds while its levels are not calibrated yet."""
    total = 0
    for value in metric.metric_state.values():
        if isinstance(value, list):
            total += sum(item.nbytes for item in value if isinstance(item, Tensor))
    return total


def reference_section(settings: Settings, device: torch.device) -> dict[str, Any]:
    """The §6 workload: throughput, IoU error against exact, state bytes over the stream."""
    num_batches = max(1, settings.reference_samples // reference.BATCH)
    batches = [reference.make_batch(i) for i in range(num_batches)]  # made before timing
    kernels_s = reference.warm_up_counting()
    runs: list[dict[str, Any]] = []
    trace = []
    counting_rates: list[float] = []  # of batches counted at once, over all repeats
    result = None
    for repeat in range(settings.reference_repeats):
        metric = UnitConceptIoU(reference.UNITS, reference.CONCEPTS, quantile=0.99).to(device)
        rates, busy, counted = [], 0.0, []
        for index, (activations, masks) in enumerate(batches):
            waiting = metric.pending_samples > 0 or not metric.calibrated
            activations, masks = activations.to(device), masks.to(device)
            spent = _timed(functools.partial(metric.update, activations, masks), device)
            busy += spent
            rates.append(reference.BATCH / spent)
            if not waiting:  # counted at once: neither buffered nor the calibrating batch
                counted.append(reference.BATCH / spent)
            if repeat == 0:
                trace.append(
                    {
                        "samples": (index + 1) * reference.BATCH,
                        "state_bytes": metric.state_nbytes,  # the fixed-size count states
                        "buffer_bytes": metric_buffer_bytes(metric),
                        "pending_samples": metric.pending_samples,
                    }
                )
        start = time.perf_counter()
        result = metric.compute()
        _sync(device)
        compute_s = time.perf_counter() - start
        runs.append(
            {
                "overall_samples_per_s": num_batches * reference.BATCH / (busy + compute_s),
                "compute_s": compute_s,
            }
        )
        counting_rates += counted
        state_nbytes = metric.state_nbytes
    assert result is not None
    activations = torch.cat([a for a, _ in batches])
    masks = torch.cat([m for _, m in batches])
    exact = reference.exact_iou(activations, masks, 0.99)
    present = result.concept_present.cpu()
    iou = result.iou_quantile.cpu()
    error = (iou - exact)[:, present].abs()
    best_error = (iou[:, present].max(1).values - exact[:, present].max(1).values).abs()
    deviation = ((result.fraction_above.cpu() - 0.01).abs() / 0.01).max()
    overall = _median([r["overall_samples_per_s"] for r in runs])
    out = {
        "workload": (
            f"{reference.UNITS} units at {reference.FEATURE}×{reference.FEATURE} → "
            f"{reference.SIZE}×{reference.SIZE}, {reference.CONCEPTS} multi-label concepts, "
            f"batch {reference.BATCH}, quantile 0.99, activations and masks given"
        ),
        "num_samples": num_batches * reference.BATCH,
        "repeats": settings.reference_repeats,
        "runs": runs,
        "samples_per_s": overall,
        "counting_kernels": "numba" if _counting.available() else "pytorch",
        "kernels_load_s": kernels_s,
        "counting_samples_per_s_median": _median(counting_rates) if counting_rates else None,
        "reference_samples_per_s": REFERENCE_SAMPLES_PER_S,
        "ratio_to_reference": overall / REFERENCE_SAMPLES_PER_S,
        "speedup_goal": SPEEDUP_GOAL,
        "speedup_met": overall / REFERENCE_SAMPLES_PER_S >= SPEEDUP_GOAL,
        "iou_max_error": float(error.max()),
        "iou_mean_error": float(error.mean()),
        "best_iou_max_error": float(best_error.max()),
        "iou_error_goal": IOU_ERROR_GOAL,
        "iou_error_met": float(error.max()) <= IOU_ERROR_GOAL,
        "fraction_above_max_rel_deviation": float(deviation),
        "state_bytes": state_nbytes,
        "state_trace": trace,
    }
    _log(
        f"[reference] {overall:.1f} samples/s = {out['ratio_to_reference']:.1f}x the reference; "
        f"IoU max error {out['iou_max_error']:.5f}"
    )
    out["concepts_150"] = _reference_150(settings, device)
    return out


def _reference_150(settings: Settings, device: torch.device) -> dict[str, Any]:
    """The §6 stream at ADE20K's vocabulary size: 30 objects with 4 parts each = 150 concepts."""
    num_batches = max(1, settings.reference_samples // 2 // reference.BATCH)
    batches = [reference.make_batch(i, objects=30, parts_per_object=4) for i in range(num_batches)]
    concepts = batches[0][1].shape[1]
    rates = []
    result = None
    for _ in range(settings.reference_repeats):
        metric = UnitConceptIoU(reference.UNITS, concepts, quantile=0.99).to(device)
        busy = 0.0
        for activations, masks in batches:
            busy += _timed(
                functools.partial(metric.update, activations.to(device), masks.to(device)), device
            )
        start = time.perf_counter()
        result = metric.compute()
        _sync(device)
        rates.append(num_batches * reference.BATCH / (busy + time.perf_counter() - start))
    assert result is not None
    exact = reference.exact_iou(
        torch.cat([a for a, _ in batches]), torch.cat([m for _, m in batches]), 0.99
    )
    present = result.concept_present.cpu()
    error = (result.iou_quantile.cpu() - exact)[:, present].abs()
    out = {
        "num_samples": num_batches * reference.BATCH,
        "concepts": concepts,
        "samples_per_s": _median(rates),
        "goal_samples_per_s": CONCEPTS_150_GOAL,
        "met": _median(rates) >= CONCEPTS_150_GOAL,
        "iou_max_error": float(error.max()),
    }
    _log(f"[reference] 150 concepts: {out['samples_per_s']:.1f} samples/s")
    return out


# --------------------------------------------------------------------------- 3. memory, state


def _child_memory(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: peak RSS before and after one workload."""
    if kind == "reference":
        num_batches = max(1, int(params["samples"]) // reference.BATCH)
        reference.make_batch(0)
        metric = UnitConceptIoU(reference.UNITS, reference.CONCEPTS, quantile=0.99)
        before = _peak_rss_mib()
        for index in range(num_batches):
            metric.update(*reference.make_batch(index))  # made on the fly, not kept
        metric.compute()
        samples = num_batches * reference.BATCH
        return {"baseline_mib": before, "peak_mib": _peak_rss_mib(), "samples": samples}
    if kind == "training":
        return _training_memory(params["config"], int(params["batches"]), params["sizes"])
    settings = replace(PRESETS["smoke"], **params["settings"])
    case = _make_case(kind, settings, torch.device("cpu"))
    forward_floor(case.model, case.segmenter, case.batch_size, case.batch_size)  # warm
    before = _peak_rss_mib()
    _dissect(case)
    return {"baseline_mib": before, "peak_mib": _peak_rss_mib(), "samples": case.num_samples}


def _run_child(kind: str, params: dict[str, Any], threads: int) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-memory",
        kind,
        "--child-params",
        json.dumps(params),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {kind!r} failed:\n{done.stderr[-4000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    out: dict[str, Any] = json.loads(line)
    out["added_mib"] = out["peak_mib"] - out["baseline_mib"]
    return out


def state_formula(units: int, concepts: int, levels: int) -> int:
    """The metric's documented state size in bytes: ``8·U·(L+1)·(C+1) + 4·U·L + 8·C + 16``."""
    return 8 * units * (levels + 1) * (concepts + 1) + 4 * units * levels + 8 * concepts + 16


def throughput_section(
    settings: Settings, overhead: dict[str, Any], reference_out: dict[str, Any], threads: int
) -> dict[str, Any]:
    """Dissection samples/s (from section 1), peak memory (children), state bytes."""
    passes = {}
    for name, r in overhead.items():
        passes[name] = {
            "samples_per_s": r["dissect_samples_per_s"],
            "analysis_samples_per_s": r["num_samples"] / max(r["analysis_s_median"], 1e-9),
            "num_samples": r["num_samples"],
        }
    kinds = ["toy", "paper_synthetic"] + (["paper_progan"] if settings.memory_progan else [])
    memory = {}
    for kind in kinds:
        params = {
            "settings": {
                k: getattr(settings, k)
                for k in (
                    "toy_samples",
                    "toy_batch",
                    "paper_samples",
                    "paper_batch",
                    "paper_resolution",
                    "synthetic_samples",
                )
            }
        }
        memory[kind] = _run_child(kind, params, threads)
        _log(f"[memory] {kind}: peak {memory[kind]['peak_mib']:.0f} MiB")
        passes[kind]["peak_rss_mib"] = memory[kind]["peak_mib"]
        passes[kind]["rss_added_mib"] = memory[kind]["added_mib"]
    memory["reference"] = _run_child("reference", {"samples": settings.reference_samples}, threads)
    default = inspect.signature(UnitConceptIoU).parameters
    levels = int(default["num_levels"].default) + int(default["num_dense_levels"].default)
    by_size = []
    for units in (64, 128, 512, 1024):
        for concepts in (8, 32, 150):
            nbytes = UnitConceptIoU(units, concepts).state_nbytes
            formula = state_formula(units, concepts, levels)
            by_size.append(
                {
                    "units": units,
                    "concepts": concepts,
                    "levels": levels,
                    "state_bytes": nbytes,
                    "formula_bytes": formula,
                    "matches": nbytes == formula,
                    "state_mib": nbytes / 2**20,
                }
            )
    trace = reference_out["state_trace"]
    calibration = int(inspect.signature(UnitConceptIoU).parameters["calibration_samples"].default)
    per_sample = max(t["buffer_bytes"] / max(t["pending_samples"], 1) for t in trace)
    return {
        "passes": passes,
        "memory": memory,
        "state_vs_samples": trace,
        # Count states never change size; the buffer holds at most the calibration samples
        # (plus the batch that completes them) and is empty once the levels are set.
        "state_flat": len({t["state_bytes"] for t in trace}) == 1
        and all(t["buffer_bytes"] <= per_sample * (calibration + reference.BATCH) for t in trace)
        and all(t["buffer_bytes"] == 0 for t in trace if t["pending_samples"] == 0),
        "state_vs_size": by_size,
    }


# --------------------------------------------------------------------------- 4. training


class BatchClock(pl.Callback):
    """Time between consecutive training batch starts (step, hooks, logging, data included)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts.append(time.perf_counter())

    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


#: Analysis arguments of the quick presets (the full run uses every callback's defaults).
ANALYSIS_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "defaults": {"dissection": {}, "intervention": {}, "artifacts": {}, "quality": {}},
    "reduced": {
        "dissection": {"num_samples": 64},
        "intervention": {
            "num_samples": 8,
            "dissect_samples": 32,
            "max_ablated_units": 3,
            "num_random": 1,
        },
        "artifacts": {"num_samples": 32, "top_k": 4, "num_seeds": 2, "num_projections": 64},
        "quality": {"num_samples": 32, "num_projections": 64},
    },
    "tiny": {
        "dissection": {"num_samples": 32, "top_n": 2, "top_k": 2},
        "intervention": {
            "num_samples": 4,
            "dissect_samples": 16,
            "max_ablated_units": 2,
            "num_random": 1,
            "num_images": 2,
        },
        "artifacts": {
            "num_samples": 16,
            "top_k": 2,
            "num_seeds": 2,
            "num_projections": 16,
            "num_images": 2,
        },
        "quality": {"num_samples": 16, "num_projections": 16},
    },
}


def _callback_factories(
    segmenter: Any, every: int, sizes: str
) -> dict[str, Callable[[], list[pl.Callback]]]:
    """Each callback as the demo uses it (defaults, ``raise_on_error`` so a failure shows)."""
    extra = ANALYSIS_SIZES[sizes]
    # The analysis itself is measured: no budget may skip it (the budget is derived below).
    common: dict[str, Any] = {
        "every_n_train_steps": every,
        "raise_on_error": True,
        "max_overhead": None,
    }

    def dissection() -> DissectionCallback:
        return DissectionCallback(list(DEMO_LAYERS), segmenter, **common, **extra["dissection"])

    def intervention(dissection: DissectionCallback | None = None) -> pl.Callback:
        return InterventionCallback(
            "generator.layer3",
            list(DEMO_CONCEPTS),
            segmenter,
            dissection=dissection,
            **common,
            **extra["intervention"],
        )

    def demo() -> list[pl.Callback]:
        # Exactly as the demo attaches them (its own sizes at every preset), made to raise.
        callbacks = default_callbacks(every_n_batches=every)
        for callback in callbacks:
            callback.raise_on_error = True
        return callbacks

    def artifacts() -> pl.Callback:
        return ArtifactPruningCallback("generator.layer3", **common, **extra["artifacts"])

    def quality() -> pl.Callback:
        return QualityMonitor(**common, **extra["quality"])

    return {
        "none": lambda: [],
        "DissectionCallback": lambda: [dissection()],
        "InterventionCallback": lambda: [intervention()],
        "ArtifactPruningCallback": lambda: [artifacts()],
        "QualityMonitor": lambda: [quality()],
        "demo default_callbacks (all four)": demo,
    }


def _default_cadence(callback: pl.Callback) -> int:
    return int(inspect.signature(type(callback)).parameters["every_n_train_steps"].default)


def _train_once(
    callbacks: list[pl.Callback],
    data: SceneDataModule,
    batches: int,
    device: torch.device,
    log_dir: str,
) -> dict[str, Any]:
    pl.seed_everything(0, verbose=False)
    model = load_pretrained_scene_gan()  # trained: the analyses see the concepts they track
    clock = BatchClock()
    # What each analysis costs is what its budget is charged: its own time, plus its part of a
    # pass of samples it shared with the analyses due at the same step (docs/callbacks.md).
    charged: dict[str, dict[int, float]] = {}
    for callback in callbacks:
        if isinstance(callback, ScheduledAnalysis):
            record = charged.setdefault(type(callback).__name__, {})
            callback.budget.record_analysis = charged_by_step(  # type: ignore[assignment,method-assign]
                record, callback.budget.record_analysis
            )
    profiler = SimpleProfiler(dirpath=log_dir, filename="profile")
    trainer = pl.Trainer(
        max_steps=2 * batches,  # two optimizer steps per batch
        max_epochs=-1,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=TensorBoardLogger(log_dir, name="bench"),
        callbacks=[clock, *callbacks],
        profiler=profiler,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
    # The analysis runs at the last batch (and before the first): every interval but the last
    # is a plain training batch; the first two warm up.
    intervals = clock.intervals()[2:] or clock.intervals()
    per_callback = {}
    for callback in callbacks:
        prefix = f"[Callback]{callback.state_key}."
        hooks = {
            key[len(prefix) :]: values
            for key, values in profiler.recorded_durations.items()
            if key.startswith(prefix)
        }
        batch_end = hooks.get("on_train_batch_end", [0.0])
        every = getattr(callback, "every_n_train_steps", None) or batches
        due = {i for i in range(len(batch_end)) if (i + 1) % every == 0}
        per_batch = _median([d for i, d in enumerate(batch_end) if i not in due] or batch_end)
        # Each analysis, in order: one at train start if the callback has one, then at every
        # `every` batches. The first prepares what later ones keep (e.g. SWD's real side).
        analyses = list(charged[type(callback).__name__].values())  # in step order
        first, later = analyses[0], analyses[1:] or analyses
        per_callback[type(callback).__name__] = {
            "analysis_s": _median(later),
            "first_analysis_s": first,
            "analyses": len(analyses),
            "hook_s_per_batch": per_batch,
            "cadence": _default_cadence(callback),
        }
    return {"batch_s": _median(intervals), "callbacks": per_callback}


def _reset_peak_rss() -> bool:
    """Reset Linux's ``VmHWM`` to the current resident size (``clear_refs`` 5); False if not."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _training_memory(config: str, batches: int, sizes: str) -> dict[str, Any]:
    """In a fresh process: peak RSS of a short training run with one configuration's callbacks.

    The analyses run once, at the last batch (cadence = ``batches``). Rendering scenes peaks
    above training and leaves that memory with the allocator, where training's own peak would
    hide, so the run renders only 512 scenes (it loops over them) and the high-water mark is
    reset once they and the toy segmenter are loaded (``baseline_mib``).
    """
    _quiet_lightning()
    segmenter = load_toy_segmenter()
    data = SceneDataModule(num_scenes=512, batch_size=64, seed=0)
    data.setup("fit")
    callbacks = _callback_factories(segmenter, batches, sizes)[config]()
    gc.collect()
    reset = _reset_peak_rss()
    before = _peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        _train_once(callbacks, data, batches, torch.device("cpu"), tmp)
    return {"baseline_mib": before, "peak_mib": _peak_rss_mib(), "peak_reset": reset}


def training_memory(settings: Settings, threads: int) -> dict[str, Any]:
    """Peak RSS of training with each configuration, and what its callbacks add to plain."""
    configs = list(_callback_factories(None, 1, settings.analysis_sizes))
    peaks = {}
    for config in configs:
        params = {
            "config": config,
            "batches": settings.train_batches,
            "sizes": settings.analysis_sizes,
        }
        peaks[config] = _run_child("training", params, threads)
        _log(f"[memory] training with {config}: peak {peaks[config]['peak_mib']:.0f} MiB")
    plain = peaks["none"]["peak_mib"]
    return {
        name: {"peak_mib": r["peak_mib"], "added_to_training_mib": r["peak_mib"] - plain}
        for name, r in peaks.items()
    }


def training_section(settings: Settings, device: torch.device, threads: int = 2) -> dict[str, Any]:
    """Per-callback training overhead at the default cadence, amortised (see module docs)."""
    segmenter = load_toy_segmenter()
    segmenter.module.to(device)
    batches = settings.train_batches
    data = SceneDataModule(num_scenes=max(64 * (batches + 2), 512), batch_size=64, seed=0)
    data.setup("fit")
    # Two analyses per run (at its middle and last batch): the first and a later one.
    factories = _callback_factories(segmenter, max(1, batches // 2), settings.analysis_sizes)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in factories}
    with tempfile.TemporaryDirectory() as tmp:
        _train_once([], data, batches, device, str(Path(tmp) / "warm-up"))  # not recorded
        for round_ in range(settings.train_rounds):
            for name, factory in factories.items():
                log_dir = str(Path(tmp) / f"{round_}_{len(runs[name])}_{name.split()[0]}")
                runs[name].append(_train_once(factory(), data, batches, device, log_dir))
                _log(f"[training] round {round_} {name}: {runs[name][-1]}")
    baseline = _median([r["batch_s"] for r in runs.pop("none")])
    configs = {}
    for name, results in runs.items():
        names = list(results[0]["callbacks"])
        parts = {}
        added = 0.0
        for cb in names:
            analysis = _median([r["callbacks"][cb]["analysis_s"] for r in results])
            first = _median([r["callbacks"][cb]["first_analysis_s"] for r in results])
            hook = _median([r["callbacks"][cb]["hook_s_per_batch"] for r in results])
            cadence = results[0]["callbacks"][cb]["cadence"]
            parts[cb] = {
                "analysis_s": analysis,
                "first_analysis_s": first,
                "hook_s_per_batch": hook,
                "cadence": cadence,
            }
            added += analysis / cadence + hook
        analysis_total = sum(p["analysis_s"] for p in parts.values())
        first_total = sum(p["first_analysis_s"] for p in parts.values())
        cadence = min(p["cadence"] for p in parts.values())
        budget = TRAINING_TARGET_PCT / 100 * baseline
        hooks = sum(p["hook_s_per_batch"] for p in parts.values())
        # With the default budget (max_overhead=0.05, split evenly among the callbacks) each
        # analysis runs at the cadence the rule of callbacks/_budget.py stretches it to, which
        # counts the callback's per-batch upkeep too: analysis / effective_cadence + hook ≤
        # share · batch time, never more often than its cadence.
        share = TRAINING_TARGET_PCT / 100 / len(parts)
        budgeted = 0.0
        for part in parts.values():
            # (A hook that alone took the whole share would leave no room: a cadence of "never"
            # is then written as the largest whole number of batches that JSON keeps exactly.)
            room = share * baseline - part["hook_s_per_batch"]
            never = 2**53
            stretched = min(never, math.ceil(part["analysis_s"] / room)) if room > 0 else never
            part["effective_cadence"] = max(part["cadence"], stretched)
            budgeted += part["analysis_s"] / part["effective_cadence"] + part["hook_s_per_batch"]
        target = NO_BUDGET_TARGETS_PCT.get(name, TRAINING_TARGET_PCT)
        configs[name] = {
            "callbacks": parts,
            "analysis_s_per_cycle": analysis_total,
            "first_analysis_s": first_total,
            "default_cadence": cadence,
            "overhead_pct": 100 * added / baseline,
            "target_pct": target,
            "met": 100 * added / baseline <= target,
            "overhead_pct_with_budget": 100 * budgeted / baseline,
            "met_with_budget": 100 * budgeted / baseline <= TRAINING_TARGET_PCT,
            "effective_cadences": {cb: p["effective_cadence"] for cb, p in parts.items()},
            "batch_s_with_callbacks": _median([r["batch_s"] for r in results]),
            "cadence_for_target": (
                math.ceil(analysis_total / (budget - hooks)) if budget > hooks else None
            ),
        }
    return {
        "method": (
            "amortised: per-batch time measured over plain training batches (clock callback), "
            "analysis time: what each callback's budget is charged (its own time and its part of "
            "a pass shared with the analyses due at the same step), on a run that triggers it at "
            "its middle and last batch (and at train start where the callback does); overhead "
            "= (later analysis / every_n_train_steps + per-batch hook) / batch time. The first "
            "analysis, which also prepares what later ones keep, is reported beside it"
        ),
        "model": f"shipped toy SceneGAN (32 px), batch 64, on {device.type}",
        "analysis_sizes": (
            "every callback's defaults"
            if settings.analysis_sizes == "defaults"
            else f"{settings.analysis_sizes} (quick run, not the defaults): "
            + json.dumps(ANALYSIS_SIZES[settings.analysis_sizes])
        ),
        "train_batches_per_run": batches,
        "rounds": settings.train_rounds,
        "baseline_batch_s": baseline,
        "configs": configs,
        # Peak RSS in fresh processes (a process's high-water mark cannot be reset).
        "memory": training_memory(settings, threads),
    }


# --------------------------------------------------------------------------- 5. scaling


def synthetic_batch(
    batch: int, units: int, concepts: int, size: int, feature: int = 8, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Smooth random activations and single-label masks (argmax of smooth random fields)."""
    g = torch.Generator().manual_seed(seed)
    activations = F.avg_pool2d(
        torch.randn(batch, units, feature + 2, feature + 2, generator=g), 3, 1
    )
    logits = F.avg_pool2d(torch.randn(batch, concepts, 10, 10, generator=g), 3, 1)
    labels = logits.argmax(1, keepdim=True).float()
    labels = F.interpolate(labels, size=(size, size), mode="nearest").long()[:, 0]
    masks = F.one_hot(labels, concepts).permute(0, 3, 1, 2).contiguous().bool()
    return activations.contiguous(), masks


def _update_rate(
    batch: int, units: int, concepts: int, size: int, repeats: int, device: torch.device
) -> float:
    activations, masks = synthetic_batch(batch, units, concepts, size)
    activations, masks = activations.to(device), masks.to(device)
    metric = UnitConceptIoU(units, concepts, segmentation_size=(size, size)).to(device)
    metric.calibrate(activations)
    metric.update(activations, masks)  # warm up
    times = [_timed(lambda: metric.update(activations, masks), device) for _ in range(repeats)]
    return batch / _median(times)


def scaling_section(settings: Settings, device: torch.device) -> dict[str, Any]:
    base = {"batch": 32, "units": 512, "concepts": 32, "size": 64}
    axes = {
        "batch": settings.batch_sizes,
        "units": settings.unit_counts,
        "concepts": settings.concept_counts,
        "size": settings.mask_sizes,
    }
    out: dict[str, Any] = {
        "base": base,
        "data": "synthetic: smooth random activations at 8×8, single-label masks",
    }
    for axis, values in axes.items():
        rows = []
        for value in values:
            point = {**base, axis: value}
            rate = _update_rate(
                point["batch"],
                point["units"],
                point["concepts"],
                point["size"],
                settings.scaling_batches,
                device,
            )
            rows.append({**point, "samples_per_s": rate})
        out[axis] = rows
        _log(
            f"[scaling] {axis}: " + ", ".join(f"{r[axis]}: {r['samples_per_s']:.1f}" for r in rows)
        )
    # Why upsampling runs in channels_last (see functional/upsample.py).
    x = torch.randn(32, 512, 8, 8, device=device)
    nchw = _timed(lambda: F.interpolate(x, 64, mode="bilinear"), device)  # slow: once
    cl = x.contiguous(memory_format=torch.channels_last)
    channels_last = _median(
        [_timed(lambda: F.interpolate(cl, 64, mode="bilinear"), device) for _ in range(3)]
    )
    out["upsample_32x512x8x8_to_64"] = {"nchw_s": nchw, "channels_last_s": channels_last}
    return out


def _key(function: Callable[..., Any]) -> tuple[str, int, str]:
    code = function.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def _spent(
    stats: dict[tuple[str, int, str], Any],
    function: Callable[..., Any],
    outside: Callable[..., Any] | None = None,
) -> float:
    """Cumulative seconds of ``function`` in a cProfile table, less its calls from ``outside``."""
    entry = stats.get(_key(function))
    if entry is None:
        return 0.0
    callers = entry[4]
    inside = callers.get(_key(outside), (0, 0, 0.0, 0.0))[3] if outside is not None else 0.0
    return float(entry[3] - inside)


def profile_section(settings: Settings, device: torch.device) -> dict[str, Any]:
    """The ten functions and torch ops with the most own time in a dissection pass (cProfile).

    cProfile rather than ``torch.profiler``: it also times the package's own functions, and the
    compiled counting kernels, which run outside any torch op.
    """
    out = {}
    for name in ("toy", "paper_synthetic"):
        case = _make_case(name, settings, device)
        case.num_samples = settings.profile_samples
        _dissect(case, num_samples=case.batch_size)  # warm
        profiler = cProfile.Profile()
        _sync(device)
        start = time.perf_counter()
        profiler.runcall(_dissect, case)
        _sync(device)
        wall = time.perf_counter() - start
        stats = pstats.Stats(profiler)
        table = stats.stats  # type: ignore[attr-defined]

        parts = {
            "generator forward (activations captured)": _spent(table, type(case.model).forward),
            "segmenter": _spent(table, type(case.segmenter).segment),
            # Calibration counts pixels above its candidate levels too: that part is its own.
            "counting (upsample, bin, bincount)": _spent(
                table, _unit_concept_update, outside=unit_concept_levels
            ),
            "level calibration": _spent(table, unit_concept_levels),
            "compute (IoU, IQR from counts)": _spent(table, unit_concept_compute),
            "top-k samples": _spent(table, _merge_topk),
        }
        parts["other (checks, report, state adds)"] = max(0.0, wall - sum(parts.values()))
        rows = [
            (f"{Path(file).name}:{line}({fn})" if file != "~" else fn, calls, own)
            for (file, line, fn), (_, calls, own, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        ]
        rows.sort(key=lambda row: row[2], reverse=True)
        out[name] = {
            "num_samples": case.num_samples,
            "wall_s": wall,
            "breakdown_s": parts,
            "top_ops": [
                {"op": op, "self_s": own, "share": own / wall, "calls": calls}
                for op, calls, own in rows[:10]
            ],
        }
    return out


NOTES = [
    "Upsampling runs in channels_last memory format on aligned blocks of 32 units "
    "(functional/upsample.py); NCHW bilinear upsampling of [B, 512, 8, 8] is an order of "
    "magnitude slower on CPU (measured in scaling.upsample_32x512x8x8_to_64).",
    "Thresholding without comparisons: each unit's levels sit on a power-of-two grid, so "
    "ceil(value · 2^-e) and a per-unit lookup table give every pixel its bin (number of levels "
    "below it), bit-for-bit the decisions of value > level, instead of a binary search.",
    "Fused counting: each pixel's set of present concepts becomes a label-combination id; one "
    "bincount over (combination, unit, bin) per block of units, then a [K, C] matrix product "
    "expands combinations to concepts (exact in float32 below 2^24 pixels; in float64 where "
    "a reduced float32 matmul precision, TF32 or bfloat16, is set). Many distinct "
    "combinations switch to counting (pixel, concept) pairs.",
    "With the optional numba (the `fast` extra) the CPU counts come from compiled kernels "
    "(functional/_counting.py): one pass per upsampled value does the grid cell, the table "
    "lookup and the count, four units side by side (16-bit lookup tables where a block's bins "
    "fit them); whole blocks of units go to whichever thread is free, each block's upsampling "
    "and kernels on one thread (with fewer blocks than threads, a block's units are shared out "
    "instead), and torch's ops in that loop run single-threaded so that its spinning OpenMP "
    "workers leave the cores to the kernels (1.8x on two vCPUs); the IQR search over levels is "
    "compiled too, and skips concepts on no pixel or on all. The counts and IQRs are identical "
    "to the PyTorch path's.",
    "Level calibration interpolates only the 16,384 pixels per unit its log-spaced candidates "
    "are read from (functional.upsample.upsample_at, by flat index into one copy of the batch), "
    "and upsamples the calibration batch once, for its exact count at the candidate levels; "
    "where a block's label combinations × candidate bins are at most half the batch's pixels "
    "that count is joint with the concepts and its bins merge into the final levels' (a subset "
    "of the candidates), so the calibration batch is counted once instead of twice.",
    "Work is chunked to ~2^20 values per tensor operation (cache-sized, bounded memory), with "
    "no per-unit or per-concept Python loop; counts are integers (int32 per block of a "
    "batch, int64 states; never bf16).",
    "One segmenter pass per batch serves every dissected layer; one generator pass captures all "
    "layers through forward hooks.",
    "torch.compile was not tried: on the CPU it needs a C++ compiler at run time.",
]


# --------------------------------------------------------------------------- 6. GPU


def gpu_section(settings: Settings) -> dict[str, Any]:
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
        reason = f"no CUDA device available (torch {torch.__version__}, {built})"
        _log(f"[gpu] skipped: {reason}")
        return {"skipped": True, "reason": reason}
    device = torch.device("cuda")
    _log(f"[gpu] {torch.cuda.get_device_name(device)}")
    overhead = overhead_section(settings, device)
    reference_out = reference_section(settings, device)
    memory = {}
    for name in ("toy", "paper_progan", "paper_synthetic"):
        case = _make_case(name, settings, device)
        forward_floor(case.model, case.segmenter, case.batch_size, case.batch_size)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.max_memory_allocated(device)
        _dissect(case)
        torch.cuda.synchronize(device)
        memory[name] = {
            "peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "allocated_before_mib": before / 2**20,
        }
        del case
        torch.cuda.empty_cache()
    return {
        "skipped": False,
        "device_name": torch.cuda.get_device_name(device),
        "overhead": overhead,
        "reference_workload": {k: v for k, v in reference_out.items() if k != "state_trace"},
        "throughput": {
            name: {"samples_per_s": overhead[name]["dissect_samples_per_s"], **memory[name]}
            for name in overhead
        },
    }


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lightning
    import torchmetrics

    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """A human summary of the JSON results."""
    meta = results["meta"]
    m = meta["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Preset `{meta['preset']}`, {meta['date']}, {meta['duration_s']:.0f} s. Machine: "
        f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads, torch "
        f"{m['torch']}, lightning {m['lightning']}. Load average (1 min) before each section: "
        + ", ".join(f"{k} {v}" for k, v in meta["load"].items())
        + ".",
        "",
        "## 1. Dissection overhead (dissect ÷ generator + segmenter forward; target ≤ 1.5×)",
        "",
        "| setting | samples | forward s | dissect s | ratio | analysis ms/sample | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["overhead"].items():
        lines.append(
            f"| {name} | {r['num_samples']} | {_fmt(r['forward_s_median'])} | "
            f"{_fmt(r['dissect_s_median'])} | **{_fmt(r['ratio'])}×** | "
            f"{_fmt(r['analysis_ms_per_sample'])} | {'yes' if r['met'] else 'no'} |"
        )
    lines += [""] + [f"- {name}: {r['description']}" for name, r in results["overhead"].items()]
    ref = results["reference_workload"]
    lines += [
        "",
        "## 2. MISSION §6 workload (metric alone)",
        "",
        f"{ref['workload']}; {ref['num_samples']} samples.",
        "",
        f"- overall {_fmt(ref['samples_per_s'], 1)} samples/s (calibration, counting and "
        f"compute; batches counted after calibration: median "
        f"{_fmt(ref['counting_samples_per_s_median'] or float('nan'), 1)} samples/s) = "
        f"**{_fmt(ref['ratio_to_reference'], 1)}×** the reference's "
        f"{ref['reference_samples_per_s']} samples/s (goal ≥ 30×)",
        f"- counting kernels: {ref.get('counting_kernels', 'pytorch')}"
        + (
            f" (loaded once per process in {ref['kernels_load_s']:.2f} s, before timing)"
            if ref.get("kernels_load_s") is not None
            else ""
        ),
        f"- IoU max abs error vs exact {ref['iou_max_error']:.5f} (mean {ref['iou_mean_error']:.6f}"
        f", goal ≤ 0.005); best-concept IoU max error {ref['best_iou_max_error']:.5f}",
        f"- metric state {ref['state_bytes'] / 2**20:.1f} MiB; peak RSS "
        f"{results['throughput']['memory']['reference']['peak_mib']:.0f} MiB "
        f"({results['throughput']['memory']['reference']['added_mib']:.0f} MiB above the "
        "process before streaming)",
    ]
    wide = ref.get("concepts_150")
    if wide:
        lines.append(
            f"- the same stream at {wide['concepts']} concepts (30 objects × 4 parts), "
            f"{wide['num_samples']} samples: **{_fmt(wide['samples_per_s'], 1)} samples/s** "
            f"(goal ≥ {_fmt(wide['goal_samples_per_s'], 0)}), IoU max error "
            f"{wide['iou_max_error']:.5f}"
        )
    thr = results["throughput"]
    lines += [
        "",
        "## 3. Dissection throughput, memory, metric state",
        "",
        "| setting | dissect samples/s | analysis-only samples/s | peak RSS MiB | added MiB |",
        "|---|---|---|---|---|",
    ]
    for name, p in thr["passes"].items():
        lines.append(
            f"| {name} | {_fmt(p['samples_per_s'], 1)} | {_fmt(p['analysis_samples_per_s'], 1)} | "
            f"{_fmt(p['peak_rss_mib'], 0) if 'peak_rss_mib' in p else '—'} | "
            f"{_fmt(p['rss_added_mib'], 0) if 'rss_added_mib' in p else '—'} |"
        )
    trace = thr["state_vs_samples"]
    lines += [
        "",
        "Metric state after each batch of the §6 stream, count states + calibration buffer: "
        + ", ".join(
            f"{t['samples']}: {t['state_bytes'] / 2**20:.1f} + {t['buffer_bytes'] / 2**20:.1f} MiB"
            for t in trace
        )
        + f"; flat: {thr['state_flat']}.",
        "",
        "| units | concepts | state MiB | = formula |",
        "|---|---|---|---|",
    ]
    for s in thr["state_vs_size"]:
        lines.append(
            f"| {s['units']} | {s['concepts']} | {_fmt(s['state_mib'], 1)} | {s['matches']} |"
        )
    tr = results["training"]
    lines += [
        "",
        "## 4. Training overhead at the default cadence",
        "",
        f"{tr['method']}. Analysis sizes: {tr['analysis_sizes']}. Baseline batch "
        f"{tr['baseline_batch_s'] * 1000:.0f} ms ({tr['model']}). Without a budget "
        "(`max_overhead=None`) the targets are Dissection ≤ 3%, Intervention ≤ 10%, "
        "ArtifactPruning ≤ 15%, Quality ≤ 3%, the demo's four ≤ 10%; with the default budget "
        "(`max_overhead=0.05`, split evenly among the callbacks of a trainer) every row ≤ 5% at "
        "the effective cadence the budget's rule gives (computed from the measured costs "
        "above by that rule, which the tests check step by step with a fake clock; no run "
        "with the budget is timed).",
        "",
        "| callbacks | analysis s / cycle (first) | cadence | no budget | target | met "
        "| with budget | effective cadence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in tr["configs"].items():
        cadences = ", ".join(str(v) for v in c.get("effective_cadences", {}).values())
        first = c.get("first_analysis_s")
        lines.append(
            f"| {name} | {_fmt(c['analysis_s_per_cycle'])}"
            + (f" ({_fmt(first)})" if first is not None else "")
            + f" | {c['default_cadence']} | "
            f"**{_fmt(c['overhead_pct'], 1)}%** | ≤ {_fmt(c['target_pct'], 0)}% | "
            f"{'yes' if c['met'] else 'no'} | {_fmt(c.get('overhead_pct_with_budget'), 1)}% | "
            f"{cadences} |"
        )
    memory = tr.get("memory")
    if memory:
        lines += [
            "",
            f"Peak RSS of a {tr['train_batches_per_run']}-batch training run whose analyses run "
            "once (a fresh process each, its high-water mark reset once the scenes are rendered; "
            "the demo's full 2,500-batch run is measured in docs/benchmarks.md):",
            "",
            "| callbacks | peak RSS MiB | added to plain training MiB |",
            "|---|---|---|",
        ]
        for name, m in memory.items():
            lines.append(f"| {name} | {m['peak_mib']:.0f} | {m['added_to_training_mib']:.0f} |")
    sc = results["scaling"]
    lines += ["", "## 5. Scaling of the metric's update (samples/s)", "", f"{sc['data']}."]
    for axis in ("batch", "units", "concepts", "size"):
        lines.append(
            f"- {axis}: "
            + ", ".join(f"{r[axis]} → {_fmt(r['samples_per_s'], 1)}" for r in sc[axis])
        )
    up = sc["upsample_32x512x8x8_to_64"]
    lines.append(
        f"- upsampling [32, 512, 8, 8] → 64×64: NCHW {up['nchw_s'] * 1000:.0f} ms, channels_last "
        f"{up['channels_last_s'] * 1000:.0f} ms"
    )
    for name, prof in results["profile"].items():
        lines += [
            "",
            f"Top operators of dissect() ({name}, {prof['num_samples']} samples, "
            f"{prof['wall_s']:.2f} s under cProfile):",
            "",
            "Where the time goes: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in prof["breakdown_s"].items())
            + ".",
            "",
            "| function / op | own s | share of wall | calls |",
            "|---|---|---|---|",
        ]
        for op in prof["top_ops"]:
            lines.append(
                f"| `{op['op']}` | {_fmt(op['self_s'])} | {op['share'] * 100:.0f}% | "
                f"{op['calls']} |"
            )
    lines += ["", "What was done:", ""] + [f"- {note}" for note in results["notes"]]
    gpu = results["gpu"]
    lines += ["", "## 6. GPU", ""]
    if gpu["skipped"]:
        lines.append(f"Skipped: {gpu['reason']}.")
    else:
        lines.append(f"{gpu['device_name']}:")
        for name, r in gpu["overhead"].items():
            lines.append(
                f"- {name}: ratio {_fmt(r['ratio'])}×, {_fmt(r['dissect_samples_per_s'], 1)} "
                f"samples/s, peak {gpu['throughput'][name]['peak_allocated_mib']:.0f} MiB"
            )
        g = gpu["reference_workload"]
        lines.append(
            f"- §6 workload: {_fmt(g['samples_per_s'], 1)} samples/s "
            f"({_fmt(g['ratio_to_reference'], 1)}× the CPU reference), IoU max error "
            f"{g['iou_max_error']:.5f}"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the 'quick' preset (< ~3 min)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="full (default), quick, smoke")
    parser.add_argument("--out", default=str(HERE / "results.json"), help="JSON results file")
    parser.add_argument("--markdown", help="summary file (default: RESULTS.md beside --out)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--skip-gpu", action="store_true", help="skip section 6 even with CUDA")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    parser.add_argument("--child-params", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every section and write the JSON and markdown files; returns the results."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child_memory:
        print(json.dumps(_child_memory(args.child_memory, json.loads(args.child_params))))
        return {}
    if args.quick and args.preset not in (None, "quick"):
        raise SystemExit(f"Expected either --quick or --preset {args.preset}, but got both.")
    settings = PRESETS["quick" if args.quick else (args.preset or "full")]
    _quiet_lightning()
    cpu = torch.device("cpu")
    started = time.perf_counter()
    load: dict[str, float] = {"start": _load()}
    _log(f"[run_all] preset {settings.preset}, {args.threads} threads, load {load['start']}")

    def section(name: str, fn: Callable[[], Any]) -> Any:
        load[name] = _load()
        tick = time.perf_counter()
        value = fn()
        _log(f"[run_all] {name}: {time.perf_counter() - tick:.0f} s")
        return value

    overhead = section("overhead", lambda: overhead_section(settings, cpu))
    reference_out = section("reference_workload", lambda: reference_section(settings, cpu))
    throughput = section(
        "throughput", lambda: throughput_section(settings, overhead, reference_out, args.threads)
    )
    training = section("training", lambda: training_section(settings, cpu, args.threads))
    scaling = section("scaling", lambda: scaling_section(settings, cpu))
    profiled = section("profile", lambda: profile_section(settings, cpu))
    gpu = (
        {"skipped": True, "reason": "--skip-gpu was given"}
        if args.skip_gpu
        else section("gpu", lambda: gpu_section(settings))
    )
    load["end"] = _load()
    results = {
        "meta": {
            "preset": settings.preset,
            "settings": asdict(settings),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "duration_s": time.perf_counter() - started,
            "machine": machine(),
            "load": load,
        },
        "overhead": overhead,
        "reference_workload": reference_out,
        "throughput": throughput,
        "training": training,
        "scaling": scaling,
        "profile": profiled,
        "notes": NOTES,
        "gpu": gpu,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    summary = Path(args.markdown) if args.markdown else out.with_name("RESULTS.md")
    summary.write_text(markdown(results))
    _log(f"[run_all] wrote {out} and {summary} in {results['meta']['duration_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
