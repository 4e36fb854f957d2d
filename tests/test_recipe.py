"""The training recipe (jdm/recipe.py), the flags generated from settings dataclasses
(jdm/cli_types.py) and the one batched-inference helper (jdm/inference.py)."""
import argparse
import json
from dataclasses import fields

import pytest
import torch

import jdm
from jdm.cli import build_parser
from jdm.cli_types import add_field_flags, fields_from_flags
from jdm.counterfactual import CounterfactualSettings
from jdm.inference import batched
from jdm.recipe import RunConfig, train_run
from jdm.sampling import Guidance
from jdm.train import TrainConfig

TINY = dict(preset="tiny", limit=64, timesteps=50, samples=2, ddim_steps=2, test_limit=32)


@pytest.mark.parametrize("bad, message", [
    (dict(model="ddpm", alpha=0.5), "only apply to --model joint"),
    (dict(model="ddpm", augment=True), "--augment only applies"),
    (dict(model="ddpm", labels_per_class=3), "only apply to --model joint or classifier"),
    (dict(model="joint", labels_per_class=3, label_fraction=0.5), "not both"),
    (dict(model="joint", label_fraction=1.5), "(0, 1]"),
    (dict(model="joint", label_seed=3), "--label-seed needs"),
    (dict(model="joint", timesteps=10, ddim_steps=20), "more than --timesteps"),
    (dict(model="joint", fd_samples=2), "at least 4"),
    (dict(model="gan"), "model must be one of"),
])
def test_run_config_refuses_what_would_fail_after_training(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        RunConfig(**bad)


def test_label_batches_default_only_under_a_budget():
    config = TrainConfig(batch_size=16)
    assert RunConfig(model="joint").with_label_batches(config) == config
    assert RunConfig(model="joint", labels_per_class=5).with_label_batches(config).labelled_batch_size == 16
    with pytest.raises(ValueError, match="only apply to --model joint or classifier"):
        RunConfig(model="ddpm").check_train_config(TrainConfig(labelled_batch_size=4))


def test_train_run_trains_measures_and_logs(tmp_path):
    log = train_run(RunConfig(model="joint", **TINY), TrainConfig(steps=2, batch_size=16),
                    tmp_path / "run", progress=False)
    on_disk = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert on_disk["test_metrics"] == log["test_metrics"] and log["steps"] == 2
    assert set(log["test_metrics"]) >= {"test_accuracy", "test_ece", "test_loss"}
    assert log["test_metrics"]["test_images"] == 32
    assert {p.rsplit("/", 1)[1] for p in log["written"]} == {"last.pt", "samples.png", "train_log.json"}
    assert log["command"].startswith("jdm.recipe.train_run(RunConfig(model='joint'")
    with pytest.raises(ValueError, match="already exists"):  # a second run never overwrites it
        train_run(RunConfig(model="joint", **TINY), TrainConfig(steps=2, batch_size=16), tmp_path / "run")


@pytest.mark.parametrize("cls", [RunConfig, TrainConfig, Guidance, CounterfactualSettings])
def test_generated_flags_leave_the_defaults_to_the_dataclass(cls):
    parser = argparse.ArgumentParser()
    add_field_flags(parser, cls)
    assert fields_from_flags(cls, parser.parse_args([])) == cls()


def test_train_flags_reach_every_train_config_field():
    """weight_decay, grad_clip, amp and ema_warmup included: every field but eval_every (no
    eval_fn on the command line) has a train flag, and the flag sets it."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices["train"]._actions}
    assert {f.name for f in fields(TrainConfig)} - dests == {"eval_every"}
    args = sub.choices["train"].parse_args(["--out", "x", "--weight-decay", "0.01", "--no-amp",
                                            "--grad-clip", "0.5", "--train-steps", "7"])
    config = fields_from_flags(TrainConfig, args)
    assert (config.weight_decay, config.amp, config.grad_clip, config.steps) == (0.01, False, 0.5, 7)


def test_batched_slices_moves_and_concatenates():
    seen = []

    def fn(x, t):
        seen.append(x.shape[0])
        return x.sum(dim=1) + t
    x, t = torch.arange(14.0).reshape(7, 2), torch.arange(7.0)
    assert torch.equal(batched(fn, x, t, batch_size=3), x.sum(dim=1) + t)
    assert seen == [3, 3, 1]
    with pytest.raises(ValueError, match="positive int"):
        batched(fn, x, t, batch_size=0)


def test_every_classifier_kind_has_the_same_logits_and_predict():
    torch.manual_seed(0)
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    unet = jdm.UNet(jdm.UNET_PRESETS["tiny"])
    models = [jdm.JointDiffusion(unet, jdm.NoiseSchedule(50)),
              jdm.EncoderClassifier(jdm.UNet(jdm.UNET_PRESETS["tiny"])),
              jdm.EvaluatorNet()]
    for model in models:
        model.train()
        logits = model.logits(x, batch_size=2)
        assert logits.shape == (5, 10) and model.training  # eval mode inside, restored after
        assert torch.equal(model.predict(x), logits.argmax(1))
