"""One input check for every public entry point: images, timesteps and the Trainer's data.

jdm's images are float tensors (N, C, H, W) in [-1, 1]. The mistakes a new user makes (images in
[0, 1] or [0, 255], uint8 or float64 tensors, a single image without its batch dimension, an empty
batch, a timestep outside the schedule) would otherwise give raw torch errors or, worse,
confidently wrong answers. These helpers turn each into a ``ValueError`` that says what was
expected and how to convert, and never reshape, rescale or clip anything themselves.

    weights = next(model.parameters())
    check_images(x, model.image_shape, dtype=weights.dtype, device=weights.device, clean=True)
    t = check_timesteps(t, n=x.shape[0], num_steps=model.schedule.num_steps, device=x.device)
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor

__all__ = ["check_images", "check_timesteps", "check_image_range", "check_int", "check_float",
           "check_generator", "check_training_inputs", "SEED_LIMIT", "MAX_BATCH"]

SEED_LIMIT = 2**32  # seeds are 0 .. 2**32 - 1: numpy's range; seed * 1_000_003 + epoch fits int64
MAX_BATCH = 65_536  # images in one request (a batch, a grid): larger is a typo, not a workload

_RANGE_TOLERANCE = 1e-3  # float32 rounding of v / 127.5 - 1 and of samplers' clamps


def _shape_text(shape: tuple[int, ...]) -> str:
    return f"(N, {', '.join(map(str, shape))})"


def check_images(x: Tensor, image_shape: tuple[int, ...], *, dtype: torch.dtype | None = None,
                 device: torch.device | None = None, clean: bool = False,
                 name: str = "images", strict: bool = True) -> None:
    """Check a batch of images (N, *image_shape) before it reaches a model.

    Args:
        x: the batch, a float tensor (N, C, H, W).
        image_shape: the model's (C, H, W).
        dtype, device: the model's weights' dtype and device, which ``x`` must share (None: any).
        clean: ``x`` holds clean images, so also check their scale (one device sync; see
            ``check_image_range``). Noisy x_t are unbounded: pass False.
        name: what to call ``x`` in messages.
        strict: with ``clean``, refuse any value outside [-1, 1] (see ``check_image_range``).

    Raises:
        ValueError: not a tensor, wrong shape, empty batch, integer/float64 dtype, another device
            than the model, or (``clean``) NaN/inf or 0..255 values ([0, 1] values warn).
    """
    expected = _shape_text(tuple(image_shape))
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a float tensor of shape {expected} in [-1, 1], got "
                         f"{type(x).__name__}")
    if x.dim() == len(image_shape) and tuple(x.shape) == tuple(image_shape):
        raise ValueError(f"{name} must be a batch of shape {expected}, got one image of shape "
                         f"{tuple(x.shape)}: add the batch dimension with x[None]")
    if x.dim() != len(image_shape) + 1 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"expected {name} of shape {expected}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (0 images); pass at least one image")
    if not x.is_floating_point():
        hint = " (from 0..255: x.float() / 127.5 - 1)" if x.dtype == torch.uint8 else ""
        raise ValueError(f"{name} must be floating point in [-1, 1], got dtype {x.dtype}; "
                         f"convert it{hint}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} are {x.dtype} but the model's weights are {dtype}; "
                         f"convert with x.to({dtype})")
    if device is not None and x.device != device:
        raise ValueError(f"{name} are on {x.device} but the model is on {device}; "
                         "move them with x.to(device)")
    if clean:
        check_image_range(x, name, strict=strict)


def check_image_range(x: Tensor, name: str = "images", strict: bool = True) -> None:
    """Check that clean images are finite and in [-1, 1] (one device sync).

    Any value outside [-1, 1] (beyond float rounding) is an error: 0..255 pixel values, but also
    torchvision-``Normalize``d images (e.g. [-0.81, 2.02]) and [-1, 1] images converted a second
    time with ``x * 2 - 1`` ([-3, 1]), which a model would otherwise classify confidently wrong.
    A batch without any negative value whose maximum exceeds 0.5 gets a ``UserWarning``
    ("[0, 1]?"): real Fashion-MNIST images in [-1, 1] always hold −1 (the background), while a
    uniform grey batch (e.g. zeros) is valid and passes.

    ``strict=False`` lets values beyond ±1 pass when the batch also holds negatives: for a
    predicted x̂_0 (``schedule.predict_x0``) that a guidance objective classifies with gradients,
    which legitimately leaves [-1, 1]. Everything that takes data is strict.
    """
    low, high = (float(v) for v in torch.aminmax(x.detach().float()))
    if not math.isfinite(low) or not math.isfinite(high):
        raise ValueError(f"{name} hold NaN or infinite values")
    found = f"got values in [{low:.3g}, {high:.3g}]"
    if low >= 0 and high > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"{name} must lie in [-1, 1], {found}: they look like 0..255 pixel values; "
                         "convert with x / 127.5 - 1")
    if strict and (low < -1 - _RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE):
        raise ValueError(f"{name} must lie in [-1, 1] (jdm's image scale), {found}: undo any "
                         "Normalize(mean, std) or second x * 2 - 1; images in [0, 1] convert "
                         "with x * 2 - 1")
    if low >= 0 and high > 0.5:
        warnings.warn(f"{name} have no negative values ({found}): they look like [0, 1] images, "
                      "but jdm expects [-1, 1]; convert with x * 2 - 1", UserWarning, stacklevel=3)


def check_timesteps(t: Tensor | int | None, n: int, num_steps: int,
                    device: torch.device) -> Tensor:
    """Turn ``t`` (None = 0, an int, or an (n,) integer tensor) into an (n,) long tensor.

    Raises:
        ValueError: a bool or float, a tensor of another shape or dtype, or a step outside
            0..num_steps-1 (one device sync for a tensor).
    """
    allowed = f"0..{num_steps - 1}"
    if t is None:
        t = 0
    if isinstance(t, numbers.Integral) and not isinstance(t, bool):
        if not 0 <= int(t) < num_steps:
            raise ValueError(f"t must lie in {allowed} (the schedule's steps), got {int(t)}")
        return torch.full((n,), int(t), dtype=torch.long, device=device)
    if not isinstance(t, Tensor):
        raise ValueError(f"t must be an int in {allowed} or an integer tensor of shape ({n},), "
                         f"got {type(t).__name__}")
    if t.shape != (n,) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"t must be an int or an integer tensor of shape ({n},), got shape "
                         f"{tuple(t.shape)} and dtype {t.dtype}")
    if n:
        low, high = (int(v) for v in torch.aminmax(t))
        if low < 0 or high >= num_steps:
            raise ValueError(f"t must lie in {allowed} (the schedule's steps), got values from "
                             f"{low} to {high}")
    return t.to(device=device, dtype=torch.long)


def check_int(value, name: str, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool, not a float such as 2.5 or 10.0, not a
    string) in ``low..high`` (``high`` None: no upper bound); else a ``ValueError`` naming ``name``
    and the allowed range. Call it at public entry points, before any work."""
    allowed = f"{low}..{high}" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer ({allowed}), got {value!r} "
                         f"({type(value).__name__})")
    value = int(value)
    if value < low or (high is not None and value > high):
        upper = f" and <= {high}" if high is not None else ""
        raise ValueError(f"{name} must be >= {low}{upper}, got {value}")
    return value


def check_float(value, name: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float if it is a finite real number (an int is fine, a bool or a string is
    not) in [low, high] (None: unbounded on that side); else a ``ValueError`` naming ``name``."""
    allowed = ("a finite number" + (f" >= {low:g}" if low is not None and high is None else "")
               + (f" in [{low:g}, {high:g}]" if low is not None and high is not None else "")
               + (f" <= {high:g}" if high is not None and low is None else ""))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or (low is not None and value < low) or (
            high is not None and value > high):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_generator(generator, device: torch.device, name: str = "generator") -> None:
    """``generator`` must be None or a ``torch.Generator`` on ``device``'s type: the samplers draw
    their noise on the generator's device, so a CUDA generator for a CPU model (or on a machine
    without CUDA) would fail deep inside torch."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"{name} must be a torch.Generator or None, got {generator!r} "
                         f"({type(generator).__name__}); e.g. torch.Generator().manual_seed(0)")
    if generator.device.type not in ("cpu", torch.device(device).type):
        raise ValueError(f"{name} is on {generator.device} but the model is on {device}: use "
                         "torch.Generator() (CPU) or one on the model's device")


def check_training_inputs(model, images: Tensor, labels: Tensor | None, config, eval_fn) -> None:
    """``jdm.Trainer``'s arguments fit together (``config`` a ``TrainConfig``); each message says
    what to change."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError("images must be a float tensor of shape (N, C, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images)}")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != images.shape[0]):
        raise ValueError(f"labels must have shape ({images.shape[0]},) to match the images, "
                         f"got {tuple(labels.shape)}")
    if config.batch_size > images.shape[0]:
        raise ValueError(f"batch_size {config.batch_size} is larger than the dataset "
                         f"({images.shape[0]} images); lower it or use more data")
    if config.eval_every and eval_fn is None:
        raise ValueError(f"eval_every={config.eval_every} but no eval_fn was given")
    if config.labelled_batch_size and (labels is None or not (labels >= 0).any()):
        raise ValueError(f"labelled_batch_size={config.labelled_batch_size} needs labels "
                         "with at least one labelled image (label >= 0; −1 = unlabelled)")
    for name in ("loss", "spec"):
        if not callable(getattr(model, name, None)):
            raise ValueError(f"the model must have a {name}() method (see jdm.diffusion)")
    if images.shape[0] and images.is_floating_point():
        check_image_range(images, "training images", strict=True)  # once, not every step
    classes = getattr(model, "num_classes", None)  # the loss checks labels only on the CPU
    if labels is not None and labels.numel() and classes is not None and not (
            int(labels.min()) >= -1 and int(labels.max()) < classes):
        raise ValueError(f"labels must lie in 0..{classes - 1}, or be −1 for unlabelled "
                         f"images; got values from {int(labels.min())} to {int(labels.max())}")
