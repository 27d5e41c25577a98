"""One pass over seeded samples for several analyses: each consumer gets exactly the batches it
would get alone, the generator and each segmenter run once per batch, and one consumer's failure
stops only that consumer."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
from gan_dissect_callbacks.engines.artifacts.scoring import TopActivatingSamples, score_units
from gan_dissect_callbacks.engines.dissection import DissectionSamples, dissect
from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from gan_dissect_callbacks.engines.passes import PassBatch, SampleConsumer, run_sample_pass


class Recorder(SampleConsumer):
    """Keeps copies of everything it is handed."""

    def __init__(self, *args, fail_at: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[PassBatch] = []
        self.fail_at = fail_at

    def add(self, batch: PassBatch) -> None:
        if self.fail_at is not None and len(self.batches) == self.fail_at:
            raise RuntimeError("this consumer breaks")
        self.batches.append(batch)


class CountingSegmenter:
    """The toy segmenter, counting its calls."""

    def __init__(self) -> None:
        self.inner = load_toy_segmenter()
        self.vocabulary = self.inner.vocabulary
        self.segmentation_size = self.inner.segmentation_size
        self.soft_segment = self.inner.soft_segment
        self.calls = 0

    def segment(self, images: Tensor) -> Tensor:
        self.calls += 1
        return self.inner.segment(images)


@pytest.fixture(scope="module")
def gan() -> SceneGAN:
    torch.manual_seed(0)
    return SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0).eval()


def forward_calls(g: AnalysedGenerator) -> list[int]:
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    g.module.generator.register_forward_hook(count)
    return calls


def test_every_consumer_gets_the_batches_it_would_get_alone(gan) -> None:
    segmenter = CountingSegmenter()
    shared = [
        Recorder(12, 4, seed=3, layers=["generator.layer2"], segmenter=segmenter),
        Recorder(8, 4, seed=3, layers=["generator.layer3"]),  # fewer samples, whole batches
    ]
    g = AnalysedGenerator(gan)
    calls = forward_calls(g)
    run_sample_pass(g, shared)
    assert calls[0] == 3  # 12 samples in batches of 4, once for both
    assert segmenter.calls == 3  # only the first consumer wants masks
    alone = [
        Recorder(12, 4, seed=3, layers=["generator.layer2"], segmenter=load_toy_segmenter()),
        Recorder(8, 4, seed=3, layers=["generator.layer3"]),
    ]
    for consumer in alone:
        run_sample_pass(AnalysedGenerator(gan), [consumer])
    for mine, theirs in zip(shared, alone, strict=True):
        assert len(mine.batches) == len(theirs.batches) == mine.num_samples // 4
        for a, b in zip(mine.batches, theirs.batches, strict=True):
            assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
            for layer in mine.layers:
                assert torch.equal(a.activations[layer], b.activations[layer])
            if mine.segmenter is not None:
                assert torch.equal(a.masks_of(mine.segmenter), b.masks_of(theirs.segmenter))
        assert mine.seconds > 0


def test_a_failing_consumer_stops_alone_and_keeps_its_error(gan) -> None:
    broken = Recorder(12, 4, fail_at=1)
    healthy = Recorder(12, 4)
    run_sample_pass(AnalysedGenerator(gan), [broken, healthy])
    assert len(broken.batches) == 1 and len(healthy.batches) == 3
    assert healthy.error is None
    with pytest.raises(RuntimeError, match="this consumer breaks"):
        broken.raise_error()


def test_a_failing_begin_skips_the_consumer(gan) -> None:
    class BadStart(Recorder):
        def begin(self, g: AnalysedGenerator) -> None:
            raise ValueError("cannot start")

    bad, good = BadStart(8, 4), Recorder(8, 4)
    run_sample_pass(AnalysedGenerator(gan), [bad, good])
    assert bad.batches == [] and len(good.batches) == 2
    assert isinstance(bad.error, ValueError)


def test_the_pass_stops_when_no_consumer_takes_more(gan) -> None:
    g = AnalysedGenerator(gan)
    calls = forward_calls(g)
    run_sample_pass(g, [Recorder(64, 4, fail_at=0), Recorder(4, 4)])
    assert calls[0] == 1


def test_consumers_of_other_samples_cannot_share_a_pass(gan) -> None:
    g = AnalysedGenerator(gan)
    for other in (Recorder(8, 4, seed=1), Recorder(8, 2), Recorder(6, 4)):
        assert not Recorder(8, 4).same_samples(other)
        with pytest.raises(ValueError, match="want the same samples"):
            run_sample_pass(g, [Recorder(8, 4), other])
    assert Recorder(8, 4).same_samples(Recorder(4, 4))  # a whole first batch


def test_every_two_consumers_of_a_pass_must_want_the_same_samples(gan) -> None:
    g = AnalysedGenerator(gan)
    # Each goes with the 8 of the first, but 10 samples would be drawn in chunks 4, 4, 2 and a
    # pass of 14 draws 4, 4, 4, 2: the second would get other (and more) samples.
    with pytest.raises(ValueError, match="want the same samples"):
        run_sample_pass(g, [Recorder(8, 4), Recorder(10, 4), Recorder(14, 4)])
    whole = [Recorder(8, 4), Recorder(12, 4), Recorder(14, 4)]
    run_sample_pass(g, whole)
    assert [sum(len(b.indices) for b in c.batches) for c in whole] == [8, 12, 14]


def test_a_generation_failure_fails_the_pass(gan) -> None:
    # A layer of the discriminator does not run while generating: shared work, shared failure.
    consumers = [Recorder(8, 4), Recorder(8, 4, layers=["discriminator.main.0"])]
    with pytest.raises(ValueError, match="did not run while generating"):
        run_sample_pass(AnalysedGenerator(gan), consumers)


def test_a_dissection_and_a_scoring_from_one_pass_equal_their_own_passes(gan) -> None:
    segmenter = load_toy_segmenter()
    settings = {"num_samples": 16, "batch_size": 8, "seed": 2}
    samples = DissectionSamples(["generator.layer2"], segmenter, top_k=2, **settings)
    top = TopActivatingSamples("generator.layer3", **settings)
    g = AnalysedGenerator(gan)
    calls = forward_calls(g)
    run_sample_pass(g, [samples, top])
    assert calls[0] == 2
    shared = dissect(g, ["generator.layer2"], segmenter, top_k=2, samples=samples, **settings)
    alone = dissect(g, ["generator.layer2"], segmenter, top_k=2, **settings)
    assert shared.to_dict() == alone.to_dict()

    real = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    swd = {"num_descriptors_per_image": 8, "num_projections": 16, "top_k": 2}
    shared_scores = score_units(g, "generator.layer3", real, samples=top, **swd, **settings)
    alone_scores = score_units(g, "generator.layer3", real, **swd, **settings)
    assert shared_scores.to_dict() == alone_scores.to_dict()


def test_a_pass_made_with_other_arguments_is_refused(gan) -> None:
    segmenter = load_toy_segmenter()
    g = AnalysedGenerator(gan)
    samples = DissectionSamples(["generator.layer2"], segmenter, num_samples=8, batch_size=4)
    run_sample_pass(g, [samples])
    with pytest.raises(
        ValueError, match=r"arguments of the dissect\(\) call \(seed=1\), but got seed=0"
    ):
        dissect(g, ["generator.layer2"], segmenter, num_samples=8, batch_size=4, seed=1,
                samples=samples)  # fmt: skip
    top = TopActivatingSamples("generator.layer3", num_samples=8, batch_size=4)
    run_sample_pass(g, [top])
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    with pytest.raises(ValueError, match=r"score_units\(\) call \(layers=\['generator.layer2'\]\)"):
        score_units(g, "generator.layer2", real, num_samples=8, batch_size=4, top_k=2,
                    samples=top)  # fmt: skip
