"""Screenshots of a real TensorBoard for the docs, taken by headless Chromium.

Run the demo first (``python -m gan_dissect_callbacks.demos train``), then::

    python docs/make_screenshots.py runs/scenes/version_0 --out docs/images

It starts TensorBoard on 127.0.0.1 with every image step kept
(``--samples_per_plugin images=1000``), waits until its HTTP API answers, and asks Chromium
(``chromium``, Debian's package; ``--chromium`` names another binary) for one PNG per view in
:data:`VIEWS`: the dashboard's own deep links (:func:`view_url`) select what each picture
shows, so a screenshot is what a user sees at that link.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

#: file name → (dashboard, tag filter, window size). Smoothing 0: the curves have few points.
VIEWS: dict[str, tuple[str, str, tuple[int, int]]] = {
    "tensorboard_curves.png": ("custom_scalars", "", (1400, 1000)),
    "tensorboard_layers.png": (
        "timeseries",
        "^dissection/(interpretable_units/total|mean_best_iou)$",
        (1400, 800),
    ),
    "tensorboard_gallery.png": (
        "timeseries",
        "^dissection/generator.layer3/gallery/",
        (1400, 1200),
    ),
    # A tall table: the Images dashboard shows it at its card's width, not shrunk to a height.
    "tensorboard_unit_timeline.png": (
        "images",
        "generator.layer3/unit_timeline$",
        (1400, 1000),
    ),
    "tensorboard_charts.png": (
        "timeseries",
        "layer3/unit_classes$|cloud/removal_curve$",
        (1400, 900),
    ),
    "tensorboard_intervention.png": ("timeseries", "^intervention/cloud/images$", (1400, 900)),
    "tensorboard_artifacts.png": ("timeseries", "^artifacts/", (1400, 1100)),
}


def _wait_for(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError as err:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"TensorBoard did not answer {url} within {timeout:.0f} s."
                ) from err
            time.sleep(0.5)


def view_url(base: str, dashboard: str, tag_filter: str) -> str:
    """The deep link of one view, with smoothing 0 (the curves have few points).

    The time-series dashboard reads query parameters (``forceSVG`` draws its charts without
    WebGL, which headless Chromium lacks); the older dashboards, such as custom scalars, read the
    URL's fragment.

    Example:
        >>> view_url("http://127.0.0.1:6006", "timeseries", "gallery")
        'http://127.0.0.1:6006/?smoothing=0&forceSVG=true&tagFilter=gallery#timeseries'
        >>> view_url("http://127.0.0.1:6006", "custom_scalars", "")
        'http://127.0.0.1:6006/#custom_scalars&_smoothingWeight=0&_ignoreYOutliers=false'
        >>> view_url("http://127.0.0.1:6006", "images", "timeline$")
        'http://127.0.0.1:6006/#images&tagFilter=timeline%24&_smoothingWeight=0&_ignoreYOutliers=false'
    """
    if dashboard != "timeseries":
        tags = f"&tagFilter={quote(tag_filter, safe='')}" if tag_filter else ""
        return f"{base}/#{dashboard}{tags}&_smoothingWeight=0&_ignoreYOutliers=false"
    query = "smoothing=0&forceSVG=true" + (
        f"&tagFilter={quote(tag_filter, safe='')}" if tag_filter else ""
    )
    return f"{base}/?{query}#{dashboard}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", help="the run's log folder, e.g. runs/scenes/version_0")
    parser.add_argument("--out", default="docs/images", help="folder of the PNGs")
    parser.add_argument("--port", type=int, default=6123)
    parser.add_argument("--chromium", default="chromium", help="the Chromium binary")
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time per page")
    args = parser.parse_args(argv)
    browser = shutil.which(args.chromium)
    if browser is None:
        raise SystemExit(f"No {args.chromium!r} on PATH: install Chromium or pass --chromium.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            args.logdir,
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
            "--samples_per_plugin",
            "images=1000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(f"{base}/data/runs")
        with tempfile.TemporaryDirectory() as profile:
            for name, (dashboard, tag_filter, (width, height)) in VIEWS.items():
                subprocess.run(
                    [
                        browser,
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--hide-scrollbars",
                        f"--user-data-dir={profile}",
                        f"--window-size={width},{height}",
                        f"--virtual-time-budget={args.wait_ms}",
                        f"--screenshot={out / name}",
                        view_url(base, dashboard, tag_filter),
                    ],
                    check=True,
                    capture_output=True,
                    timeout=180,
                )
                print(f"wrote {out / name}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
