"""jdm — Joint Diffusion Models, built up from scratch.

A compact PyTorch package for the course: noise schedules, a UNet whose encoder features are
exposed, DDPM/DDIM sampling, a Trainer, and (as the course grows) the joint diffusion model of
Deja, Trzciński & Tomczak (ECML PKDD 2023). See ../README.md and the numbered notebooks.
"""
import sys as _sys

if _sys.argv[:1] == ["-m"]:  # `python -m jdm` is starting (argv[0] is "-m" only while it loads)
    from ._startup import quiet_interrupts

    quiet_interrupts()  # Ctrl-C while torch loads: one line, not an import traceback
from .classifier import ClassifierHead
from .counterfactual import CounterfactualSettings, counterfactual, difference_map
from .diffusion import DiffusionModel, build_model
from .divergence import TrainingDiverged
from .encoder_classifier import EncoderClassifier
from .evaluator import EvaluatorNet
from .joint import JointDiffusion
from .pretrained import list_pretrained, load_checkpoint_model, load_pretrained
from .sampling import Guidance, eval_mode
from .schedule import NoiseSchedule
from .train import TrainConfig, Trainer
from .unet import UNET_PRESETS, UNet, UNetConfig
from .utils import get_device, pick, quick_mode, seed_everything, set_quick_mode
from . import checks  # noqa: E402  the notebooks' exercise checks: jdm.checks.q_sample(my_q_sample)

__version__ = "0.1.0"

__all__ = [
    "ClassifierHead", "CounterfactualSettings", "DiffusionModel", "EncoderClassifier",
    "EvaluatorNet", "Guidance", "JointDiffusion", "NoiseSchedule", "TrainConfig", "Trainer", "TrainingDiverged",
    "UNET_PRESETS", "UNet", "UNetConfig", "build_model", "load_checkpoint_model",
    "counterfactual", "difference_map", "eval_mode", "get_device", "list_pretrained",
    "load_pretrained", "pick", "quick_mode", "seed_everything", "set_quick_mode", "__version__",
]
