"""Throughput and accuracy of UnitConceptIoU on the MISSION §6 workload.

512 units at 8×8 upsampled to 64×64, 32 multi-label concepts, 512 samples in batches of 32,
0.99 quantile threshold; activations and masks are given (no generator or segmenter cost).
The reference pipeline measured here ran ~4.9 samples/s on 2 CPU threads; the goal is >= 30×
that with IoU within 0.005 of the exact value and memory flat in the number of samples.

Run by hand (not part of the test suite)::

    python benchmarks/bench_unit_concept_iou.py [--samples 512] [--threads 2]

Prints the median samples/s over batches, the overall rate (calibration and compute included;
data generation excluded), the largest IoU error against an exact in-memory computation at the
exact 0.99 quantile of each unit, and the peak resident memory of the streaming phase with the
part the metric adds above the process it runs in.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from gan_dissect_callbacks.functional.unit_concept import unit_concept_levels, unit_concept_update
from gan_dissect_callbacks.functional.upsample import UNIT_BLOCK, upsample_unit_block
from gan_dissect_callbacks.metrics.unit_concept_iou import UnitConceptIoU

UNITS, CONCEPTS, FEATURE, SIZE, BATCH = 512, 32, 8, 64, 32
OBJECTS, PARTS_PER_OBJECT = 8, 3


def make_batch(
    index: int,
    batch: int = BATCH,
    objects: int = OBJECTS,
    parts_per_object: int = PARTS_PER_OBJECT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic batch of hierarchical scenes and activations that partly follow them.

    Each image is split among 3–6 of ``objects`` objects (nearest random seed); each object has
    ``parts_per_object`` parts (the object cut by a random disc), so a part pixel is also its
    object's pixel: ``objects · (1 + parts_per_object)`` concepts, 32 by default (at most 64
    label combinations); 30 objects with 4 parts each give the 150 of ADE20K. Unit ``u`` follows
    concept ``u % C`` with its own gain, noise and bias; a quarter of the units are pure smooth
    noise, half are rectified.
    """
    g = torch.Generator().manual_seed(1000 + index)
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    grid = torch.stack([ys, xs], -1)  # [H, W, 2]
    seeds = torch.rand(batch, objects, 2, generator=g) * SIZE
    present = torch.rand(batch, objects, generator=g).argsort(1) < torch.randint(
        3, 7, (batch, 1), generator=g
    )
    distance = ((grid[None, None] - seeds[:, :, None, None]) ** 2).sum(-1)  # [B, O, H, W]
    distance = distance.masked_fill(~present[:, :, None, None], float("inf"))
    owner = distance.argmin(1)
    regions = F.one_hot(owner, objects).permute(0, 3, 1, 2).bool()  # [B, O, H, W]
    centres = torch.rand(batch, objects, parts_per_object, 2, generator=g) * SIZE
    radii = 6 + 14 * torch.rand(batch, objects, parts_per_object, generator=g)
    disc = ((grid[None, None, None] - centres[..., None, None, :]) ** 2).sum(-1) < radii[
        ..., None, None
    ] ** 2
    parts = (disc & regions[:, :, None]).reshape(batch, objects * parts_per_object, SIZE, SIZE)
    masks = torch.cat([regions, parts], 1)

    pooled = F.avg_pool2d(masks.float(), SIZE // FEATURE)  # [B, C, 8, 8]
    unit = torch.Generator().manual_seed(7)
    follows = torch.arange(UNITS) % masks.shape[1]
    gain = 0.5 + 1.5 * torch.rand(UNITS, generator=unit)
    gain[torch.rand(UNITS, generator=unit) < 0.25] = 0.0
    noise = 0.2 + 0.6 * torch.rand(UNITS, generator=unit)
    bias = torch.randn(UNITS, generator=unit) * 0.3
    rectify = torch.rand(UNITS, generator=unit) < 0.5
    smooth = F.avg_pool2d(
        torch.randn(batch, UNITS, FEATURE + 2, FEATURE + 2, generator=g), 3, stride=1
    )
    activations = (
        gain[None, :, None, None] * pooled[:, follows]
        + noise[None, :, None, None] * smooth
        + bias[None, :, None, None]
    )
    activations = torch.where(rectify[None, :, None, None], activations.relu(), activations)
    return activations.contiguous(), masks


def exact_iou(activations: torch.Tensor, masks: torch.Tensor, quantile: float) -> torch.Tensor:
    """IoU ``[U, C]`` at each unit's exact ``quantile`` of all upsampled pixels, in memory."""
    samples, concepts = activations.shape[0], masks.shape[1]
    pixels = masks.permute(0, 2, 3, 1).reshape(-1, concepts).float()  # [N, C]
    concept = pixels.sum(0).double()
    total = pixels.shape[0]
    low = int(quantile * (total - 1))
    weight = quantile * (total - 1) - low
    result = torch.zeros(UNITS, concepts, dtype=torch.float64)
    for block in range(UNITS // UNIT_BLOCK):
        values = torch.cat(
            [
                upsample_unit_block(activations[s : s + 64], (SIZE, SIZE), block)
                .permute(0, 2, 3, 1)
                .reshape(-1, UNIT_BLOCK)
                for s in range(0, samples, 64)
            ]
        )  # [N, 32]
        first = values.kthvalue(low + 1, dim=0).values.double()
        second = values.kthvalue(min(low + 2, total), dim=0).values.double()
        threshold = (first + weight * (second - first)).float()
        above = (values > threshold).float()
        joint = (above.T @ pixels).double()  # exact: counts < 2**24
        mask = above.sum(0).double()
        union = mask[:, None] + concept[None, :] - joint
        result[block * UNIT_BLOCK : (block + 1) * UNIT_BLOCK] = torch.where(
            union > 0, joint / union, 0.0
        )
    return result


def warm_up_counting() -> float:
    """Load (or, on first use, compile) the counting kernels: the seconds it took.

    A one-off cost per process (see ``functional/_counting.py``), kept out of the throughput.
    """
    tick = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    activations = torch.rand(1, UNIT_BLOCK + 1, 4, 4, generator=g)
    masks = torch.rand(1, 3, 8, 8, generator=g) > 0.5
    levels = unit_concept_levels(activations, (8, 8), num_levels=4, num_dense_levels=2)
    for counting in ("combinations", "pairs"):
        unit_concept_update(activations, masks, levels, counting=counting)
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--skip-exact", action="store_true", help="skip the in-memory exact comparison"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    num_batches = args.samples // BATCH
    make_batch(0)  # warm up the generator's kernels
    print(f"counting kernels loaded in {warm_up_counting():.2f} s (once per process)")
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    metric = UnitConceptIoU(UNITS, CONCEPTS, quantile=0.99)
    rates, busy = [], 0.0
    for index in range(num_batches):
        activations, masks = make_batch(index)  # generated on the fly: not timed, not kept
        tick = time.perf_counter()
        metric.update(activations, masks)
        spent = time.perf_counter() - tick
        busy += spent
        rates.append(BATCH / spent)
    tick = time.perf_counter()
    result = metric.compute()
    compute_s = time.perf_counter() - tick
    overall = num_batches * BATCH / (busy + compute_s)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"threads: {torch.get_num_threads()}, samples: {num_batches * BATCH}, batch: {BATCH}")
    print(f"median samples/s over batches: {statistics.median(rates):.1f}")
    print(f"calibrating batch (4 batches buffered, calibrated, counted): {rates[3]:.1f} samples/s")
    print(f"overall samples/s (calibration + counting + compute): {overall:.1f}")
    print(f"compute(): {compute_s:.2f} s, state: {metric.state_nbytes / 2**20:.1f} MiB")
    print(
        f"peak RSS: {peak_mb:.0f} MiB, of which {peak_mb - baseline_mb:.0f} MiB above the process"
    )
    print(f"  before the metric (torch, one generated batch: {baseline_mb:.0f} MiB)")
    distance = (result.fraction_above - 0.01).abs() / 0.01
    print(
        f"fraction above the quantile threshold vs 0.01: median rel. dev {distance.median():.4f}, "
        f"max {distance.max():.4f}"
    )
    if args.skip_exact:
        return
    batches = [make_batch(i) for i in range(num_batches)]
    activations = torch.cat([a for a, _ in batches])
    masks = torch.cat([m for _, m in batches])
    exact = exact_iou(activations, masks, 0.99)
    present = result.concept_present
    error = (result.iou_quantile - exact)[:, present].abs()
    best_exact = exact[:, present].max(1).values
    best_error = (result.iou_quantile[:, present].max(1).values - best_exact).abs()
    print(
        f"IoU max abs error vs exact at the exact 0.99 quantile: {error.max():.5f} "
        f"(mean {error.mean():.6f})"
    )
    print(
        f"best-concept IoU max abs error: {best_error.max():.5f}; "
        f"exact best IoU median {best_exact.median():.3f}"
    )


if __name__ == "__main__":
    main()
