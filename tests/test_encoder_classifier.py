"""The classifier baseline: the joint model's encoder + head trained with cross-entropy only."""
import torch

from jdm import EncoderClassifier, JointDiffusion, NoiseSchedule, UNet, UNET_PRESETS, build_model


def make(augment=False):
    torch.manual_seed(0)
    return EncoderClassifier(UNet(UNET_PRESETS["tiny"]), augment=augment)


def test_shapes_and_spec_round_trip():
    model = make(augment=True).eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert model.classify(x).shape == (3, 10)
    rebuilt = build_model(model.spec())
    rebuilt.load_state_dict(model.state_dict())
    assert isinstance(rebuilt, EncoderClassifier) and rebuilt.augment
    assert torch.equal(rebuilt.eval().classify(x), model.classify(x))


def test_same_encoder_and_head_shapes_as_the_joint_model():
    joint = JointDiffusion(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(100))
    baseline = make()
    assert {k: v.shape for k, v in baseline.state_dict().items()} == \
        {k: v.shape for k, v in joint.state_dict().items() if not k.startswith("schedule")}


def test_loss_is_cross_entropy_of_labelled_images_only_and_never_trains_the_decoder():
    model = make()
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    y = torch.tensor([3, -1, 5, -1])
    model.eval()  # no dropout, no augmentation: the loss is deterministic
    expected = torch.nn.functional.cross_entropy(model.classify(x[[0, 2]]), y[[0, 2]])
    parts = model.loss(x, y)
    assert torch.allclose(parts["loss"], expected)
    parts["loss"].backward()
    assert all(p.grad is None for p in model.unet.up.parameters())
    assert all(p.grad is None for p in model.unet.out.parameters())
    assert model.head.mlp[1].weight.grad.abs().sum() > 0


def test_a_short_run_learns_above_chance():
    from jdm.data import load_tensors

    x, y = load_tensors("fashion_mnist", train=True)
    x, y = x[:512], y[:512]
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(60):
        idx = torch.randint(0, 512, (64,))
        loss = model.loss(x[idx], y[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (model.predict(x[:256]) == y[:256]).float().mean().item()
    assert acc > 0.5, f"accuracy after 60 steps should beat chance (0.1) by far, got {acc:.2f}"
