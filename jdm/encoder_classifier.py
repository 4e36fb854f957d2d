"""The discriminative baseline: the joint model's encoder and head, trained with cross-entropy only.

To ask whether the diffusion objective helps the classifier (Deja et al. 2023, Table 1), compare
the joint model with the *same* network trained without it: the UNet encoder e_ν, the same
``ClassifierHead`` g_ω on its pooled features, the same classifier-side augmentation, the same
optimiser and step budget, and only

    L = CE(g_ω(e_ν(x_0, t=0)), y).

The UNet's decoder is built (so the model has the joint model's shape and every tool that reads
``model.unet.encode`` works) but never trained: this model does not generate. Exported weights
leave it out (``untrained_prefixes``; 56 % of the fmnist-small UNet) and loading builds it afresh.
Labels −1 mark unlabelled images, which this model cannot use (the joint model trains its diffusion
loss on them).
"""
from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .classifier import ClassifierHead
from .diffusion import MODEL_KINDS, take_rows, take_tail
from .inference import INFERENCE_BATCH, batched
from .inputs import check_images
from .joint import augment_images
from .sampling import eval_mode
from .unet import UNet, UNetConfig

__all__ = ["EncoderClassifier"]


class EncoderClassifier(nn.Module):
    """g_ω(e_ν(x, 0)) trained with cross-entropy alone: the joint model without its diffusion loss.

    Args:
        unet: supplies the encoder (``unet.encode``); its decoder is unused.
        num_classes, head_hidden, head_dropout: the ``ClassifierHead``.
        augment: flip/translate training images (``jdm.joint.augment_images``).
    """

    kind = "classifier"
    # state_dict keys of the never-trained decoder: jdm.pretrained neither ships nor expects them
    untrained_prefixes = ("unet.up.", "unet.out.")

    def __init__(self, unet: UNet, *, num_classes: int = 10, augment: bool = False,
                 head_hidden: int = 256, head_dropout: float = 0.1) -> None:
        super().__init__()
        self.unet = unet
        self.head = ClassifierHead(unet.feature_channels(), num_classes, head_hidden, head_dropout)
        self.num_classes = num_classes
        self.augment = bool(augment)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        return (cfg.image_channels, cfg.image_size, cfg.image_size)

    def spec(self) -> dict:
        return {"kind": self.kind, "unet": asdict(self.unet.config), "num_classes": self.num_classes,
                "augment": self.augment, "head_hidden": self.head.hidden,
                "head_dropout": self.head.dropout_p}

    @classmethod
    def from_spec(cls, spec: dict) -> "EncoderClassifier":
        config = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in spec["unet"].items()})
        extra = {k: v for k, v in spec.items() if k not in ("kind", "unet")}
        return cls(UNet(config), **extra)

    def _check_images(self, x: Tensor, clean: bool = False) -> None:
        """``jdm.inputs.check_images``: shape (N, C, H, W), dtype of the weights (any device:
        ``predict`` moves batches); with ``clean``, also the [0, 1] / [0, 255] scale mistakes."""
        check_images(x, self.image_shape, dtype=next(self.parameters()).dtype, clean=clean)

    def classify(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) of clean images x (N, C, H, W) in [-1, 1]; keeps gradients."""
        self._check_images(x, clean=True)
        t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.head(self.unet.encode(x, t))

    def loss(self, x0: Tensor, y: Tensor | None = None, rows: Tensor | None = None,
             labelled_tail: int = 0) -> dict[str, Tensor]:
        """Cross-entropy over the labelled images (y >= 0) of the batch; 0 if there are none.
        ``rows``: compute on these rows only, after augmenting the whole batch (distributed
        training, see ``DiffusionModel.diffusion_loss``); ``labelled_tail``: as for
        ``JointDiffusion.loss``, only the last k rows can carry labels, so only they are classified.

        Returns ``{"loss", "classification", "accuracy"}`` (scalars), as the joint model names them.
        """
        self._check_images(x0)
        if y is None:
            raise ValueError("the classifier baseline needs labels (y), −1 for unlabelled images")
        # masked over the whole batch (no x0[y >= 0]: no host-device sync, no graph break); a
        # batch without labels gives 0 (the count is clamped to 1)
        y = y.long()
        labelled = y >= 0
        x = augment_images(x0) if self.augment and self.training else x0
        x, y, labelled = take_rows(rows, x, y, labelled)
        x, y, labelled = take_tail(labelled_tail, x, y, labelled)  # no forward pass for the rest
        count = labelled.sum().clamp(min=1)
        t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        logits = self.head(self.unet.encode(x, t))  # classify() without its scale check (a sync)
        ce = F.cross_entropy(logits, y, ignore_index=-1, reduction="sum") / count
        accuracy = ((logits.argmax(1) == y) & labelled).sum() / count
        return {"loss": ce, "classification": ce, "accuracy": accuracy}

    def logits(self, x: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
        """Logits (N, num_classes) on the CPU, in eval mode (restored afterwards), ``batch_size``
        at a time."""
        self._check_images(x, clean=True)
        with eval_mode(self):
            return batched(self.classify, x, batch_size=batch_size,
                           device=next(self.parameters()).device)

    def predict(self, x: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
        """Class indices (N,) long: ``logits(x).argmax(1)``."""
        return self.logits(x, batch_size).argmax(1)


MODEL_KINDS[EncoderClassifier.kind] = EncoderClassifier  # build_model(spec) with kind "classifier"
