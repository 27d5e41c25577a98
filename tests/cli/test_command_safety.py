"""gan-dissect answers --help at once, says its defaults, keeps reports, and warns of odd layers."""

import subprocess
import sys
from pathlib import Path

import pytest

from gan_dissect_callbacks.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
FACTORY = "gan_dissect_callbacks.demos.pretrained:load_pretrained_scene_gan"
SMALL = ["--num-samples", "8", "--batch-size", "8", "--top-k", "2", "--top-n", "0"]
HEAVY = ("lightning", "matplotlib", "tensorboard", "torchvision")
HEAVY_PARTS = ("callbacks", "engines", "reporting.dissection", "metrics")

MODULES_AFTER = """
import sys
from gan_dissect_callbacks.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv", [["--help"], [FACTORY, "--layers", "generator.layer3", "--num-samples", "0"]]
)
def test_help_and_option_errors_import_neither_lightning_nor_the_analyses(argv):
    done = subprocess.run(
        [sys.executable, "-c", MODULES_AFTER, *argv], capture_output=True, text=True, cwd=ROOT
    )
    modules = set(done.stderr.split("\n")[-2].split())
    assert "gan_dissect_callbacks.cli.parser" in modules
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    assert not [
        m for m in modules for part in HEAVY_PARTS if m.startswith(f"gan_dissect_callbacks.{part}")
    ]


def test_the_package_exports_on_first_use():
    import gan_dissect_callbacks as package

    for name in package.__all__:
        assert getattr(package, name).__name__ == name
        assert name in dir(package)
    with pytest.raises(AttributeError, match="has no attribute 'Dissector'"):
        _ = package.Dissector


def test_help_shows_every_default_and_the_vocabulary_of_the_callbacks():
    parser = build_parser()
    help_text = parser.format_help()
    entries = {}  # option -> its help, one line
    for line in help_text.splitlines():
        if line.startswith("  -"):
            option = line.split()[0]
            entries[option] = line
        elif line.startswith("   ") and entries:
            entries[option] += line
    defaults = vars(parser.parse_args([FACTORY, "--layers", "generator.layer3"]))
    shown = {k: v for k, v in defaults.items() if v is not None and not isinstance(v, bool)}
    assert {"top_k": 8, "top_n": 12}.items() <= shown.items()
    assert "--gallery-units" not in help_text
    for dest, value in shown.items():
        if dest in ("target", "layers"):
            continue
        option = "--" + dest.replace("_", "-")
        assert f"(default: {value})" in " ".join(entries[option].split()), option
    # The example is the demo's layout; Lightning names its checkpoint by epoch and step.
    assert "runs/scenes/version_0/checkpoints/*.ckpt" in help_text
    assert "last.ckpt" not in help_text


def test_a_second_run_at_the_same_step_does_not_replace_the_report(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [FACTORY, "--layers", "generator.layer3", *SMALL, "--step", "3", "--out", str(out)]
    assert main(argv) == 0
    report = out / "dissection" / "step_0000003.json"
    first = report.read_text()

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--seed", "1"])
    assert exit_info.value.code == 2
    assert (
        f"{report} already holds a report of step 3. Pass --overwrite to replace it, or choose "
        "another --out or --step."
    ) in capsys.readouterr().err
    assert report.read_text() == first

    assert main([*argv, "--seed", "1", "--overwrite"]) == 0
    assert report.read_text() != first
    assert '"seed": 1' in report.read_text()


@pytest.mark.filterwarnings("ignore:Concept.s. .* never occur")  # an untrained generator
def test_narrow_layers_and_the_image_output_get_a_warning_naming_them(tmp_path, capsys):
    layers = ["generator.layer1", "generator.layer3", "generator.layer4"]
    argv = ["tests.cli.models:narrow_scene_gan", "--layers", *layers, *SMALL]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    warnings = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("gan-dissect: warning")
    ]
    assert warnings == [
        "gan-dissect: warning: layer 'generator.layer3' has only 2 units: too few for units to "
        "stand for separate concepts (dissect a layer with at least 8).",
        "gan-dissect: warning: layer 'generator.layer4' outputs the images themselves "
        "([3, 32, 32]): its units are colour channels, so their labels only say where each "
        "colour is. Dissect an inner layer instead.",
    ]
