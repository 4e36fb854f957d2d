"""Tests for jdm.viz: grids and the overview figure."""
import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

from jdm.diffusion import DiffusionModel  # noqa: E402
from jdm.schedule import NoiseSchedule  # noqa: E402
from jdm.unet import UNET_PRESETS, UNet  # noqa: E402
from jdm.viz import image_grid, overview_figure, show_images  # noqa: E402


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
