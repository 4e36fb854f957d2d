"""The project's Fashion-MNIST evaluator: a small CNN classifier, independent of the diffusion UNet.

It judges what the diffusion models make: its ``features`` (a 128-d penultimate embedding) feed
the Fréchet distance and precision/recall of ``jdm.metrics``, and its predictions give the class
balance of samples and the flip rate of counterfactuals. Because it shares nothing with the joint
model, it cannot be fooled by that model's own representation.

Architecture (``EvaluatorNet``, defaults; 28×28×1 input):

    3 × [3×3 conv → BatchNorm → ReLU → 2×2 max-pool]   32, 64, 128 channels: 28 → 14 → 7 → 3
    flatten (128·3·3 = 1152) → Linear → BatchNorm1d → ReLU   = features(x), 128-d
    Dropout(0.3) → Linear → logits (10)

BatchNorm is fine here (unlike in the joint model's head): the evaluator is trained once as a
plain classifier and only ever used in eval mode afterwards.

It trains through the project's ``Trainer`` (it has ``loss(x, y)`` and ``spec()``), so the
checkpoint, EMA and ``export_pretrained`` machinery apply unchanged; ``build_model`` rebuilds it
from its spec (kind "evaluator"). The shipped one (242,026 parameters, 0.5 MB in half precision)
was trained for 2 epochs (936 steps of 128, AdamW lr 1e-3, EMA) in 649 s on one thread of a
shared CPU and reaches 92.0% accuracy on the 10,000 test images (ECE 0.006); its manifest,
``data/checkpoints/evaluator-fmnist.json``, holds the exact command:

    python -m jdm train --model evaluator --train-steps 936 --batch-size 128 --lr 1e-3 \\
        --out runs/evaluator-fmnist --export evaluator-fmnist
    evaluator = jdm.evaluator.load_evaluator()        # EvaluatorNet, eval mode, CPU
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .diffusion import MODEL_KINDS
from .inference import INFERENCE_BATCH, batched
from .inputs import check_images
from .sampling import eval_mode

__all__ = ["EvaluatorNet", "train_evaluator", "load_evaluator", "EVALUATOR_NAME"]

EVALUATOR_NAME = "evaluator-fmnist"
"""Name of the shipped evaluator checkpoint in ``data/checkpoints/``."""


class EvaluatorNet(nn.Module):
    """A small CNN classifier with a ``features`` embedding for generation metrics.

    Args:
        image_channels: C of the input images.
        image_size: H = W of the input images (>= 8).
        num_classes: number of classes.
        width: channels of the first conv block (then 2·width, 4·width).
        feature_dim: size of the penultimate embedding ``features(x)``.
        dropout: dropout before the last layer.
    """

    kind = "evaluator"

    def __init__(self, image_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 width: int = 32, feature_dim: int = 128, dropout: float = 0.3) -> None:
        super().__init__()
        if image_channels < 1 or image_size < 8 or num_classes < 2 or width < 1 or feature_dim < 1:
            raise ValueError("need image_channels >= 1, image_size >= 8, num_classes >= 2, width >= 1"
                             f" and feature_dim >= 1, got {image_channels}, {image_size}, "
                             f"{num_classes}, {width}, {feature_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.config = dict(image_channels=image_channels, image_size=image_size,
                           num_classes=num_classes, width=width, feature_dim=feature_dim,
                           dropout=dropout)
        layers: list[nn.Module] = []
        ch, side = image_channels, image_size
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(ch, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            ch, side = out, side // 2
        self.conv = nn.Sequential(*layers)
        self.embed_layer = nn.Sequential(nn.Flatten(), nn.Linear(ch * side * side, feature_dim),
                                         nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c["image_channels"], c["image_size"], c["image_size"])

    @property
    def feature_dim(self) -> int:
        return self.config["feature_dim"]

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    def _check_images(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, self.image_shape))})"
                             f" in [-1, 1], got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")

    # ------------------------------------------------------------------------------ forward
    def features(self, x: Tensor) -> Tensor:
        """The penultimate embedding: (N, C, H, W) in [-1, 1] → (N, feature_dim), >= 0."""
        self._check_images(x)
        return self.embed_layer(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits: (N, C, H, W) → (N, num_classes)."""
        return self.classifier(self.features(x))

    def loss(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Cross-entropy (mean over the batch) and batch accuracy, for the ``Trainer``.

        x: (N, C, H, W); y: (N,) integer labels in 0..num_classes−1 (required).
        """
        if y is None:
            raise ValueError("the evaluator is a classifier: it needs labels (y is None)")
        if y.shape != (x.shape[0],) or y.is_floating_point():
            raise ValueError(f"labels must be an integer tensor of shape ({x.shape[0]},), got "
                             f"{tuple(y.shape)} of dtype {y.dtype}")
        logits = self(x)
        ce = F.cross_entropy(logits, y)
        return {"loss": ce, "accuracy": (logits.argmax(1) == y).float().mean()}

    def spec(self) -> dict:
        """A JSON-able description; ``build_model(spec)`` (or ``from_spec``) rebuilds the network."""
        return {"kind": self.kind, **self.config}

    @classmethod
    def from_spec(cls, spec: dict) -> "EvaluatorNet":
        """Rebuild an untrained ``EvaluatorNet`` from ``spec()``."""
        if spec.get("kind") != cls.kind:
            raise ValueError(f"not an evaluator spec (kind {spec.get('kind')!r}): {spec!r}")
        try:
            return cls(**{k: v for k, v in spec.items() if k != "kind"})
        except TypeError as err:
            raise ValueError(f"not a valid evaluator spec ({err}): {spec!r}") from err

    # ------------------------------------------------------------------------------ batched use
    def _batched(self, fn, x: Tensor, batch_size: int) -> Tensor:
        # the public entry points: the full check (scale included, one sync) once per call
        check_images(x, self.image_shape, dtype=next(self.parameters()).dtype, clean=True)
        with eval_mode(self):
            return batched(fn, x, batch_size=batch_size, device=next(self.parameters()).device)

    def embed(self, x: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
        """``features`` of many images, in eval mode: (N, feature_dim) on the CPU."""
        return self._batched(self.features, x, batch_size)

    def logits(self, x: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
        """Logits of many images, in eval mode: (N, num_classes) on the CPU."""
        return self._batched(self, x, batch_size)

    def predict(self, x: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
        """Predicted classes (N,) long, in eval mode."""
        return self.logits(x, batch_size).argmax(1)


MODEL_KINDS[EvaluatorNet.kind] = EvaluatorNet  # build_model uses EvaluatorNet.from_spec


def train_evaluator(images: Tensor, labels: Tensor, epochs: int = 3, batch_size: int = 128,
                    lr: float = 1e-3, seed: int = 0, progress: bool = True,
                    out_dir=None, device: str | torch.device | None = None,
                    **net_kwargs) -> EvaluatorNet:
    """Train an ``EvaluatorNet`` with the project's ``Trainer`` (AdamW, EMA, grad clipping).

    Args:
        images: (N, C, H, W) in [-1, 1]; labels: (N,) integer classes.
        epochs: passes over the data; steps = epochs · (N // batch_size).
        batch_size, lr, seed: as in ``TrainConfig``.
        out_dir: where the Trainer writes ``last.pt`` (None: no checkpoint).
        net_kwargs: passed to ``EvaluatorNet`` (image shape defaults to the data's).

    Returns:
        The EMA network (what ``export_pretrained`` ships), in eval mode, on ``device``.
    """
    from .train import TrainConfig, Trainer

    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    steps = epochs * (images.shape[0] // batch_size)
    if steps < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({images.shape[0]})")
    net_kwargs.setdefault("image_channels", images.shape[1])
    net_kwargs.setdefault("image_size", images.shape[-1])
    torch.manual_seed(seed)
    model = EvaluatorNet(**net_kwargs)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                         log_every=max(1, steps // 20), checkpoint_every=0)
    trainer = Trainer(model, images, labels, config, out_dir=out_dir, device=device,
                      progress=progress)
    trainer.fit()
    return trainer.ema_model.module.eval()


def load_evaluator(device: torch.device | str | None = None) -> EvaluatorNet:
    """The shipped Fashion-MNIST evaluator (``data/checkpoints/evaluator-fmnist.pt``), eval mode.

    Raises:
        FileNotFoundError: it is not shipped in this checkout; the message says how to train it.
    """
    from .pretrained import list_pretrained, load_pretrained

    if EVALUATOR_NAME not in list_pretrained():
        raise FileNotFoundError(
            f"the evaluator checkpoint {EVALUATOR_NAME!r} is not in data/checkpoints/; restore it "
            f"with `git checkout -- data/checkpoints/` or train and export it with `python -m jdm "
            f"train --model evaluator --train-steps 936 --lr 1e-3 --out runs/{EVALUATOR_NAME} "
            f"--export {EVALUATOR_NAME}` (about 10 minutes on a CPU)")
    return load_pretrained(EVALUATOR_NAME, device=device)
