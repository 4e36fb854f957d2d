"""The training recipe behind ``python -m jdm train``: what to train (``RunConfig``), how
(``jdm.train.TrainConfig``), then the samples, the test metrics, the log and the export.

    run = RunConfig(model="joint", preset="tiny", limit=256)
    log = train_run(run, TrainConfig(steps=3), out="runs/try")   # writes last.pt, samples.png,
    log["test_metrics"]                                          # train_log.json; returns the log

The command line, notebook 08 and the benchmarks all come through here; the CLI only parses
flags (generated from these dataclasses' fields), calls ``TrainJob`` and prints. ``TrainJob``
splits the run in two (``fit``, then ``finish``) so a caller can say what an interruption
left behind; ``train_run`` does both.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from .data import DATASETS, hide_labels, label_subset, load_tensors
from .diffusion import DiffusionModel
from .evaluate import MIN_FD_SAMPLES, classifier_metrics, generation_metrics
from .outputs import check_output, save_grid, write_atomically
from .schedule import NoiseSchedule
from .train import TrainConfig, Trainer
from .unet import UNET_PRESETS, UNet
from .utils import get_device, hardware_string

__all__ = ["RunConfig", "TrainJob", "train_run", "MODEL_CHOICES"]

MODEL_CHOICES = ("ddpm", "joint", "classifier", "evaluator")
_LABELLED = ("joint", "classifier")  # the models a label budget applies to
_LABELS_ONLY = ("--labels-per-class, --label-fraction, --label-seed and --labelled-batch-size only "
                "apply to --model joint or classifier")


@dataclass(frozen=True)
class RunConfig:
    """What one training run builds, on which data, and what it measures afterwards (the
    optimiser's settings are ``TrainConfig``'s). Checked when made: every mistake that would
    only show after training (a sample count, a flag for another model) fails first."""

    model: str = field(default="ddpm", metadata={"choices": MODEL_CHOICES, "help": (
        "ddpm = plain DDPM (ε-prediction UNet); joint = joint diffusion (DDPM + classifier head "
        "on the shared encoder); classifier = the same encoder and head trained with "
        "cross-entropy only (the baseline); evaluator = the small CNN used for metrics (ignores "
        "the UNet and diffusion settings)")})
    preset: str = field(default="fmnist-small", metadata={
        "flag": "--config", "choices": tuple(sorted(UNET_PRESETS)),
        "help": "UNet preset (jdm.unet.UNET_PRESETS); 'tiny' is for quick checks"})
    dataset: str = field(default="fashion_mnist", metadata={"choices": tuple(sorted(DATASETS)),
        "help": "training set; Fashion-MNIST ships with the project, the others download"})
    limit: int | None = field(default=None, metadata={
        "help": "use only the first N training images (quick runs); default: all"})
    timesteps: int = field(default=1000, metadata={"help": "T, the number of diffusion steps"})
    schedule: str = field(default="linear", metadata={"choices": ("linear", "cosine"), "help": (
        "noise schedule: linear β 1e-4→0.02 (DDPM) or cosine (Nichol & Dhariwal)")})
    dropout: float | None = field(default=None, metadata={
        "help": "dropout inside the UNet's ResBlocks (the evaluator's CNN for --model "
                "evaluator); default: the preset's"})
    alpha: float | None = field(default=None, metadata={
        "help": "joint: weight α of the classification loss (L = L_simple + α·CE, both means); "
                "default jdm.joint.DEFAULT_ALPHA"})
    noise_aware: bool = field(default=False, metadata={
        "help": "joint: also train the head on noisy (x_t, t) features (for guidance)"})
    augment: bool = field(default=False, metadata={
        "help": "joint, classifier: random flip + translation of the classifier's clean images"})
    head_hidden: int = field(default=256, metadata={
        "help": "joint, classifier: hidden width of the classifier head's MLP"})
    head_dropout: float = field(default=0.1, metadata={
        "help": "joint, classifier: dropout in the classifier head"})
    labels_per_class: int | None = field(default=None, metadata={"metavar": "K", "help": (
        "joint, classifier: keep the labels of K training images per class (class-balanced, "
        "drawn with --label-seed), mark the rest −1 (diffusion loss only for the joint model; "
        "the classifier skips them); the subset is written to train_log.json")})
    label_fraction: float | None = field(default=None, metadata={"metavar": "F", "help": (
        "joint, classifier: like --labels-per-class, but keep a share F in (0, 1] of each "
        "class's labels (1 = all)")})
    label_seed: int | None = field(default=None, metadata={
        "help": "seed of the labelled subset; default: the run's --seed"})
    test_limit: int | None = field(default=None, metadata={
        "help": "after training, measure on the first N test images; default: all of them"})
    fd_samples: int = field(default=0, metadata={"help": (
        "generative models on Fashion-MNIST: after training, draw this many DDIM-50 samples and "
        "measure FD, precision and recall against as many test images in the shipped "
        "evaluator's feature space (0 = skip)")})
    samples: int = field(default=64, metadata={"help": "number of images in OUT/samples.png"})
    ddim_steps: int = field(default=50, metadata={"help": "DDIM steps for OUT/samples.png"})
    export: str | None = field(default=None, metadata={"metavar": "NAME", "help": (
        "after training, ship the EMA weights as data/checkpoints/NAME.pt + NAME.json (manifest "
        "with the command and the test metrics); checked before training starts")})
    force: bool = field(default=False, metadata={
        "help": "let --export replace a shipped checkpoint of the same kind (never another kind)"})

    def __post_init__(self) -> None:
        if self.model not in MODEL_CHOICES:
            raise ValueError(f"model must be one of {MODEL_CHOICES}, got {self.model!r}")
        if self.model != "joint" and (self.alpha is not None or self.noise_aware):
            raise ValueError("--alpha and --noise-aware only apply to --model joint")
        if self.model not in _LABELLED and self.augment:
            raise ValueError("--augment only applies to --model joint or classifier")
        if self.model not in _LABELLED and (self.has_label_budget or self.label_seed is not None):
            raise ValueError(_LABELS_ONLY)
        if self.labels_per_class is not None and self.label_fraction is not None:
            raise ValueError("give --labels-per-class or --label-fraction, not both")
        if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
            raise ValueError(f"--label-fraction must lie in (0, 1] (1 = every label), got "
                             f"{self.label_fraction}")
        if self.label_seed is not None and not self.has_label_budget:
            raise ValueError("--label-seed needs --labels-per-class or --label-fraction")
        if self.model in ("ddpm", "joint") and self.ddim_steps > self.timesteps:
            raise ValueError(f"--ddim-steps {self.ddim_steps} is more than --timesteps "
                             f"{self.timesteps} (T); use at most {self.timesteps}")
        if self.fd_samples:
            available = self.fd_samples if self.test_limit is None else self.test_limit
            if min(self.fd_samples, available) < MIN_FD_SAMPLES:
                raise ValueError(
                    f"--fd-samples must be 0 (skip) or at least {MIN_FD_SAMPLES} (FD, precision "
                    f"and recall need {MIN_FD_SAMPLES} images a set), with --test-limit at least "
                    f"as large; got --fd-samples {self.fd_samples}"
                    + (f" and --test-limit {self.test_limit}" if self.test_limit else ""))

    @property
    def has_label_budget(self) -> bool:
        return self.labels_per_class is not None or self.label_fraction is not None

    def with_label_batches(self, config: TrainConfig) -> TrainConfig:
        """``config`` with the command line's default under a label budget: a labelled batch as
        large as the plain one, so every step sees as many labelled images whatever the budget."""
        return (replace(config, labelled_batch_size=config.batch_size)
                if self.has_label_budget else config)

    def check_train_config(self, config: TrainConfig) -> None:
        if config.labelled_batch_size and self.model not in _LABELLED:
            raise ValueError(_LABELS_ONLY)

    def build_model(self) -> nn.Module:
        """The untrained model (checks that the preset fits the dataset's images first)."""
        if self.model == "evaluator":
            from .evaluator import EvaluatorNet

            channels, size, _ = DATASETS[self.dataset][1]
            extra = {"dropout": self.dropout} if self.dropout is not None else {}
            return EvaluatorNet(image_channels=channels, image_size=size, **extra)
        unet_config = UNET_PRESETS[self.preset]
        preset_shape = (unet_config.image_channels, unet_config.image_size, unet_config.image_size)
        data_shape = DATASETS[self.dataset][1]
        if preset_shape != data_shape:
            fitting = sorted(n for n, c in UNET_PRESETS.items()
                             if (c.image_channels, c.image_size, c.image_size) == data_shape)
            raise ValueError(f"--config {self.preset} is for {preset_shape} images but "
                             f"{self.dataset} has {data_shape}; use one of "
                             f"{fitting or 'no preset yet'}")
        if self.dropout is not None:
            unet_config = replace(unet_config, dropout=self.dropout)
        unet_config.validate()
        unet, schedule = UNet(unet_config), NoiseSchedule(self.timesteps, self.schedule)
        head = {"augment": self.augment, "head_hidden": self.head_hidden,
                "head_dropout": self.head_dropout}
        if self.model == "joint":
            from .joint import DEFAULT_ALPHA, JointDiffusion

            alpha = DEFAULT_ALPHA if self.alpha is None else self.alpha
            return JointDiffusion(unet, schedule, alpha=alpha, noise_aware=self.noise_aware, **head)
        if self.model == "classifier":
            from .encoder_classifier import EncoderClassifier

            return EncoderClassifier(unet, **head)
        return DiffusionModel(unet, schedule)

    def training_data(self, config: TrainConfig) -> tuple[Tensor, Tensor, dict | None]:
        """The training images, their labels (−1 outside a label budget) and the budget's record
        (None without one): its settings and the indices that keep their labels."""
        images, labels = load_tensors(self.dataset, train=True)
        if self.limit is not None:
            if self.limit > images.shape[0]:
                raise ValueError(f"--limit {self.limit} is more than the {images.shape[0]} "
                                 f"training images of {self.dataset}")
            images, labels = images[:self.limit], labels[:self.limit]
        if not self.has_label_budget:
            return images, labels, None
        label_seed = config.seed if self.label_seed is None else self.label_seed
        try:
            keep = label_subset(labels, self.labels_per_class, self.label_fraction, label_seed)
        except ValueError as err:  # name the flags, not the function's arguments
            raise ValueError(f"--labels-per-class/--label-fraction: {err}") from None
        budget = {"labels_per_class": self.labels_per_class, "label_fraction": self.label_fraction,
                  "label_seed": label_seed, "labelled": int(keep.numel()),
                  "labelled_batch_size": config.labelled_batch_size, "indices": keep.tolist()}
        return images, hide_labels(labels, keep), budget

    def test_metrics(self, model: nn.Module, device: torch.device, seed: int) -> dict:
        """The trained (EMA) model measured on the test split: accuracy and ECE of a classifier;
        held-out loss and, with ``fd_samples``, FD/precision/recall of a generator."""
        images, labels = load_tensors(self.dataset, train=False)
        if self.test_limit is not None:
            images, labels = images[:self.test_limit], labels[:self.test_limit]
        metrics = classifier_metrics(model, images, labels) if self.model != "ddpm" else {}
        if hasattr(model, "sample"):
            evaluator = None
            if self.fd_samples and self.dataset == "fashion_mnist":
                from .pretrained import list_pretrained

                if "evaluator-fmnist" in list_pretrained():
                    from .evaluator import load_evaluator

                    evaluator = load_evaluator(device)
            metrics.update(generation_metrics(model, images, evaluator, self.fd_samples, seed))
        return metrics


class TrainJob:
    """One run of the recipe: ``fit()`` trains (resumable, interruptible), ``finish()`` writes
    samples.png, measures, logs and exports. Rank 0 alone finishes under ``torchrun``.

    Args:
        run, config: what to train and how. Under a label budget, ``config.labelled_batch_size``
            0 means plain batches; the command line's default is ``run.with_label_batches``.
        out: the run's folder (``last.pt``, ``samples.png``, ``train_log.json``).
        resume: continue from ``out/last.pt``.
        device: where to train (None: the best available); ignored under ``dist``.
        command: the command that started it, for the log and the manifest.
        dist: this process's rank (``jdm.distributed``), or None.
    """

    def __init__(self, run: RunConfig, config: TrainConfig, out: str | Path, *,
                 resume: bool = False, device: str | torch.device | None = None,
                 progress: bool = True, command: str = "", dist=None) -> None:
        self.start = time.perf_counter()
        run.check_train_config(config)
        self.run, self.config = run, config
        self.out, self.resume, self.command, self.progress = Path(out), resume, command, progress
        self.checkpoint = self.out / "last.pt"
        if self.checkpoint.exists() and not resume:
            raise ValueError(f"{self.checkpoint} already exists: pass --resume to continue that "
                             "run, or choose another --out")
        if not (resume and self.checkpoint.is_file()):  # a new run keeps an earlier one's results
            earlier = [n for n in ("samples.png", "train_log.json") if (self.out / n).exists()]
            if earlier:
                raise ValueError(f"{self.out} holds an earlier run's {' and '.join(earlier)}: a "
                                 "new run would overwrite them; choose another --out, or move "
                                 "them away first")
        self.device = (dist.device if dist is not None else device if isinstance(device, torch.device)
                       else get_device(device))
        self.is_main = dist is None or dist.is_main
        self.dist = dist
        torch.manual_seed(self.config.seed)  # the initial weights
        self.model = run.build_model()
        if run.export:
            from .pretrained import check_export_name

            check_export_name(run.export, self.model.spec()["kind"], run.force)
        # last.pt holds weights, EMA and two AdamW moments; a save needs room for a second copy
        state_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        check_output(self.out, "folder", need_bytes=8 * state_bytes + (1 << 20))
        self.images, labels, self.label_budget = run.training_data(config)
        self.trainer = Trainer(self.model, self.images, labels, self.config, out_dir=self.out,
                               device=self.device, progress=progress, distributed=dist)

    def fit(self) -> list[dict]:
        """Train up to ``config.steps``; raises ``TrainingDiverged``, ``TrainingInterrupted``
        (after saving) or ``jdm.distributed.RankLost``, as ``Trainer.fit`` does."""
        with self.dist.lost_ranks() if self.dist is not None else nullcontext():
            self.history = self.trainer.fit(resume=self.resume)
        return self.history

    def saved_text(self) -> str:
        """Which checkpoint holds the run now, in words (for interruption messages)."""
        saved = self.trainer.saved
        return (f"{saved[0]} holds step {saved[1]}" if saved is not None and saved[0].exists()
                else "no checkpoint was written yet")

    def finish(self) -> dict:
        """samples.png, the test metrics, train_log.json and the export; returns the log, whose
        ``"written"`` lists the files."""
        ema = self.trainer.ema_model.module
        written = [self.checkpoint]
        if hasattr(ema, "sample"):  # the evaluator CNN does not generate
            samples = ema.sample(self.run.samples, method="ddim", steps=self.run.ddim_steps,
                                 generator=torch.Generator().manual_seed(self.config.seed),
                                 progress=self.progress)
            written.append(save_grid(samples.cpu(), self.out / "samples.png"))
        metrics = self.run.test_metrics(ema, self.device, self.config.seed)
        log = {"command": self.command, "hardware": hardware_string(self.device),
               "wall_seconds": time.perf_counter() - self.start,
               "train_seconds": self.trainer.train_seconds, "steps": self.trainer.step,
               "images": int(self.images.shape[0]), "dataset": self.run.dataset,
               "label_budget": self.label_budget, "spec": self.model.spec(),
               "train_config": asdict(self.config), "history": self.history,
               "test_metrics": metrics}
        written.append(write_atomically(self.out / "train_log.json", lambda tmp: tmp.write_text(
            json.dumps(log, indent=1) + "\n")))
        if self.run.export:
            from .pretrained import export_pretrained, manifest_path

            last = self.history[-1] if self.history else {}
            shipped = {**metrics, "final_train_loss": round(last["loss"], 5)} if last else metrics
            weights = export_pretrained(self.checkpoint, self.run.export, shipped, self.command,
                                        hardware_string(self.device), force=self.run.force)
            written += [weights, manifest_path(weights)]
        return {**log, "written": [str(p) for p in written]}


def train_run(run: RunConfig, config: TrainConfig, out: str | Path, *, resume: bool = False,
              device: str | torch.device | None = None, progress: bool = True,
              command: str | None = None) -> dict:
    """Train, sample, measure, log and export in one call (one process); returns the log."""
    command = command or f"jdm.recipe.train_run({run!r}, {config!r}, out={str(out)!r})"
    job = TrainJob(run, config, out, resume=resume, device=device, progress=progress,
                   command=command)
    job.fit()
    return job.finish()
