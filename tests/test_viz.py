"""Tests for jdm.viz: labelled grids, the overview, gallery, schematic and demo figures."""
import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

from jdm.diffusion import DiffusionModel  # noqa: E402
from jdm.schedule import NoiseSchedule  # noqa: E402
from jdm.unet import UNET_PRESETS, UNet  # noqa: E402
from jdm.viz import (THUMBNAIL_INCHES, ClassifyPanel, ExplainPanel, GeneratePanel,  # noqa: E402
                     counterfactual_gallery, demo_figure,
                     draw_joint_model_schematic, image_grid, overview_figure, show_images)


def test_image_grid_maps_minus_one_to_one_onto_unit_range():
    images = torch.stack([torch.full((1, 4, 4), -1.0), torch.full((1, 4, 4), 1.0)])
    grid = image_grid(images, nrow=2)
    assert grid.shape == (8, 14, 3)  # 2 px padding around and between 4×4 images
    assert grid[2, 2, 0] == 0.0 and grid[2, 8, 0] == 1.0
    with pytest.raises(ValueError):
        image_grid(torch.zeros(1, 4, 4))
    assert show_images(images, nrow=2, title="x").get_title() == "x"


def test_overview_figure_writes_png(tmp_path):
    torch.manual_seed(0)
    model = DiffusionModel(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(20)).eval()
    path = tmp_path / "overview.png"
    overview_figure(model, torch.zeros(1, 1, 28, 28), n_samples=3, path=path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_overview_tool_draws_the_readme_picture(tmp_path):
    """tools/overview_figure.py, the README's docs/overview.png command, runs on the shipped DDPM."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "overview.png"
    done = subprocess.run([sys.executable, str(root / "tools" / "overview_figure.py"), "--out", str(out)],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:4] == b"\x89PNG" and "wrote" in done.stdout


def test_show_images_labels_rows_and_columns():
    images = torch.zeros(6, 1, 28, 28)
    ax = show_images(images, nrow=3, row_labels=["T-shirt", "Bag"], col_labels=["t=0", "t=1", "t=2"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["T-shirt", "Bag"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["t=0", "t=1", "t=2"]
    # each label sits at the centre of its row of 28-pixel images (2-pixel padding)
    assert list(ax.get_yticks()) == [2 + 14, 2 + 30 + 14]
    assert ax.figure.get_size_inches()[1] >= 2 * THUMBNAIL_INCHES
    with pytest.raises(ValueError, match="one label per grid row"):
        show_images(images, nrow=3, row_labels=["only one"])


def test_counterfactual_gallery_has_a_colour_bar():
    images = torch.rand(2, 1, 28, 28) * 2 - 1
    fig = counterfactual_gallery(images, -images, ["a", "b"])
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylim() == (-1.0, 1.0)


def test_schematic_names_the_three_parts():
    texts = " ".join(t.get_text() for t in draw_joint_model_schematic().texts)
    for part in ("shared encoder", "denoising decoder", "classifier head", "L_{simple}"):
        assert part in texts


def test_demo_figure_labels_the_sample_rows(tmp_path):
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    wanted = torch.arange(2).repeat_interleave(2)
    fig = demo_figure(ClassifyPanel(x, torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 0, 1]),
                                    torch.full((4,), 0.9), "acc"),
                      GeneratePanel(x, wanted, "sampler"),
                      ExplainPanel(x[:2], -x[:2], ["a → b", "b → a"], "cf"), ["zero", "one"],
                      path=tmp_path / "demo.png")
    labelled = [[t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes]
    assert ["zero", "one"] in labelled
    titles = [ax.title for ax in fig.axes if ax.get_title().startswith("zero")]
    assert {t.get_color() for t in titles} == {"green", "red"}  # image 1 is wrong, 0 and 2 right
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
