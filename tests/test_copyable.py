""""Copy this file into your project" must be true: each module that says so works when copied,
with exactly the files its docstring names, into an empty folder outside the jdm package."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import jdm

PACKAGE = Path(jdm.__file__).parent

TINY_MODEL = """
import torch
from torch import nn
from unet import UNet, UNetConfig
from classifier import ClassifierHead
from schedule import NoiseSchedule

class Tiny(nn.Module):  # what the samplers need of a joint model, and nothing more
    num_classes, noise_aware, image_shape = 10, True, (1, 28, 28)
    def __init__(self):
        super().__init__()
        self.unet = UNet(UNetConfig(base_channels=8, num_res_blocks=1))
        self.head = ClassifierHead(self.unet.feature_channels(), 10)
        self.schedule = NoiseSchedule(20)
torch.manual_seed(0)
model = Tiny().eval()
"""

EXAMPLES = {
    # module: (the other files its docstring names, a tiny example run in the copy's folder; the
    # tiny joint model of the samplers' examples is built from unet.py, classifier.py, schedule.py)
    "schedule.py": ([], """
        import torch
        from schedule import NoiseSchedule
        s = NoiseSchedule(50)
        x = s.q_sample(torch.zeros(2, 1, 4, 4), torch.tensor([0, 49]))
        assert x.shape == (2, 1, 4, 4) and s.alpha_bars[-1] < 1e-2
    """),
    "unet.py": ([], """
        import torch
        from unet import UNet, UNET_PRESETS
        u = UNet(UNET_PRESETS["tiny"])
        t = torch.zeros(2, dtype=torch.long)
        assert u.decode(u.encode(torch.zeros(2, 1, 28, 28), t), t).shape == (2, 1, 28, 28)
    """),
    "classifier.py": (["unet.py"], """
        import torch
        from unet import UNet, UNET_PRESETS
        from classifier import ClassifierHead
        u = UNet(UNET_PRESETS["tiny"])
        head = ClassifierHead(u.feature_channels(), 10)
        assert head(u.encode(torch.zeros(3, 1, 28, 28), torch.zeros(3, dtype=torch.long))).shape == (3, 10)
    """),
    "representation.py": ([], TINY_MODEL + """
        from representation import representation_guided_eps, representation_step
        target, x, t = torch.tensor([3, 4]), torch.zeros(2, 1, 28, 28), torch.tensor([10, 40])
        z, moved = representation_step(model, target, x, t, scale=100.0)
        assert moved.bottleneck.shape == z.bottleneck.shape
        assert representation_guided_eps(model, target, scale=100.0)(x, t).shape == x.shape
    """),
    "sampling.py": (["schedule.py", "representation.py"], TINY_MODEL + """
        from sampling import Guidance, guided_eps, sample_loop
        for kind in ("representation", "representation-x0", "classifier"):
            eps = guided_eps(model, 3, 2, Guidance(kind))
            x = sample_loop(eps, model.schedule, (2, 1, 28, 28), method="ddim", steps=3, progress=False)
            assert x.shape == (2, 1, 28, 28)
    """),
    "counterfactual.py": (["sampling.py", "schedule.py", "representation.py", "inputs.py"],
                          TINY_MODEL + """
        from counterfactual import CounterfactualSettings, counterfactual
        x = torch.rand(2, 1, 28, 28) * 2 - 1
        one = counterfactual(model, x, 4, CounterfactualSettings(t_star=10, steps=3), progress=False)
        assert one.images.shape == x.shape and one.t_star.tolist() == [10, 10]
        auto = counterfactual(model, x, 4, CounterfactualSettings(steps=3), progress=False)
        assert auto.images.shape == x.shape and auto.guidance.kind == "classifier"
    """),
}

DECOYS = {  # a file a copier's project may hold already: no copied module may import it
    "utils.py": "raise RuntimeError('the decoy utils.py was imported')\n",
}


@pytest.mark.parametrize("module", sorted(EXAMPLES))
def test_module_works_when_copied(module, tmp_path):
    needs, example = EXAMPLES[module]
    docstring = (PACKAGE / module).read_text().split('"""')[1]
    assert all(f"``{other}``" in docstring for other in needs), (module, needs)
    model_files = ["unet.py", "classifier.py", "schedule.py"] if example.startswith(TINY_MODEL) else []
    for name, text in DECOYS.items():
        (tmp_path / name).write_text(text)
    for name in {module, *needs, *model_files}:
        shutil.copy(PACKAGE / name, tmp_path / name)
    script = tmp_path / "example.py"
    body = example.removeprefix(TINY_MODEL)
    script.write_text(TINY_MODEL * (example != body) + textwrap.dedent(body))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PATH": "", "PYTHONPATH": str(tmp_path),
                                                      "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
