"""A real TensorBoard server serves the dissection views a training run wrote."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from gan_dissect_callbacks.callbacks.dissection import DissectionCallback
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
from gan_dissect_callbacks.demos.train import SceneDataModule

pytestmark = pytest.mark.slow

LAYER = "generator.layer3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(base: str, path: str, **params: str):
    url = f"{base}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_steps=8,  # 4 batches: the GAN steps two optimizers per batch
        logger=TensorBoardLogger(str(root), name="demo"),
        callbacks=[
            DissectionCallback(
                [LAYER],
                load_toy_segmenter(),
                every_n_train_steps=2,
                on_train_start=True,
                num_samples=16,
                batch_size=8,
                max_overhead=None,
            )
        ],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(
        SceneGAN(latent_dim=16, width=8, sample_every_n_batches=2),
        datamodule=SceneDataModule(num_scenes=64, batch_size=8),
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(root),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--samples_per_plugin",
            "images=100",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get_json(base, "/data/runs"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail("TensorBoard did not start serving within 60 s")
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_runs_and_scalar_curves_are_served(served):
    runs = get_json(served, "/data/runs")
    main = "demo/version_0"
    categories = ["material", "object", "part", "total"]
    assert sorted(runs) == sorted(
        [main, f"{main}/dissection/{LAYER}"]
        + [f"{main}/dissection/categories/{c}" for c in categories]
    )
    tags = get_json(served, "/data/plugin/scalars/tags")["demo/version_0"]
    for tag in ("interpretable_units/total", "interpretable_units/object", "distinct_concepts"):
        assert f"dissection/{LAYER}/{tag}" in tags
    points = get_json(
        served,
        "/data/plugin/scalars/scalars",
        run="demo/version_0",
        tag=f"dissection/{LAYER}/interpretable_units/total",
    )
    assert [p[1] for p in points] == [0, 2, 4]  # wall time, step, value


def test_a_combined_chart_draws_one_run_per_layer_and_per_category(served):
    tags = get_json(served, "/data/plugin/scalars/tags")
    layer_run = f"demo/version_0/dissection/{LAYER}"
    assert "dissection/mean_best_iou" in tags[layer_run]
    per_category = [
        run for run, t in tags.items() if f"dissection/{LAYER}/interpretable_units" in t
    ]
    assert sorted(per_category) == sorted(
        f"demo/version_0/dissection/categories/{c}" for c in ("material", "object", "part", "total")
    )
    main = get_json(
        served, "/data/plugin/scalars/scalars", run="demo/version_0",
        tag=f"dissection/{LAYER}/interpretable_units/total",
    )  # fmt: skip
    combined = get_json(
        served, "/data/plugin/scalars/scalars", run=layer_run,
        tag="dissection/interpretable_units/total",
    )  # fmt: skip
    assert [p[1:] for p in combined] == [p[1:] for p in main]  # same steps and values


def test_the_unit_timeline_is_served_as_an_image_and_a_table(served):
    images = get_json(served, "/data/plugin/images/tags")["demo/version_0"]
    assert f"dissection/{LAYER}/unit_timeline" in images
    tag = f"dissection/{LAYER}/unit_timeline_table/text_summary"
    texts = get_json(served, "/data/plugin/text/text", run="demo/version_0", tag=tag)
    assert len(texts) == 3
    assert "step 4" in texts[-1]["text"] and "<table>" in texts[-1]["text"]


def test_gallery_chart_and_samples_are_served_as_pngs(served):
    tags = get_json(served, "/data/plugin/images/tags")["demo/version_0"]
    for tag in (f"dissection/{LAYER}/gallery/0", f"dissection/{LAYER}/unit_classes"):
        assert tag in tags
        entries = get_json(served, "/data/plugin/images/images", run="demo/version_0", tag=tag)
        assert [e["step"] for e in entries] == [0, 2, 4]
        with urllib.request.urlopen(
            served + "/data/plugin/images/individualImage?" + entries[-1]["query"]
        ) as r:
            assert r.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "samples/fixed_latents" in tags


def test_units_table_is_served_as_markdown_text(served):
    tags = get_json(served, "/data/plugin/text/tags")["demo/version_0"]
    tag = f"dissection/{LAYER}/units/text_summary"  # how SummaryWriter.add_text names it
    assert tag in tags
    texts = get_json(served, "/data/plugin/text/text", run="demo/version_0", tag=tag)
    assert len(texts) == 3
    assert "<table>" in texts[-1]["text"]  # rendered markdown table


def test_custom_scalars_layout_is_served(served):
    layout = get_json(served, "/data/plugin/custom_scalars/layout")
    titles = [chart["title"] for cat in layout["category"] for chart in cat["chart"]]
    assert "interpretable units by category" in " ".join(titles)
    assert "mean best IoU (all layers)" in titles
