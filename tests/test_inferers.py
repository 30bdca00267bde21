"""CPUAutocastSlidingWindowInferer: bf16 autocast on native-bf16 CPUs, exactly SlidingWindowInferer otherwise."""

import pytest
import torch
from monai.inferers import SlidingWindowInferer

import custom_components.inferers as inferers
from custom_components.inferers import CPUAutocastSimpleInferer, CPUAutocastSlidingWindowInferer


class Probe(torch.nn.Module):
    """A 3D conv that records whether CPU autocast was on for each window batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 3, 3, padding=1)
        self.autocast_seen: list[bool] = []

    def forward(self, x):
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return self.conv(x)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("cpu_amp", [True, False])
def test_autocast_only_when_asked_and_native(monkeypatch, native, cpu_amp):
    monkeypatch.setattr(inferers, "native_bf16", lambda device: native)
    image = torch.rand(1, 1, 24, 20, 16)
    net = Probe()
    kwargs = {"roi_size": (16, 16, 16), "sw_batch_size": 2, "overlap": 0.5, "mode": "gaussian"}
    with torch.no_grad():
        ours = CPUAutocastSlidingWindowInferer(cpu_amp=cpu_amp, **kwargs)(image, net)
        seen, net.autocast_seen = net.autocast_seen, []
        plain = SlidingWindowInferer(**kwargs)(image, net)
    assert seen and all(s == (native and cpu_amp) for s in seen)
    assert ours.dtype == torch.float32 and ours.shape == plain.shape == (1, 3, 24, 20, 16)
    if native and cpu_amp:
        assert not torch.equal(ours, plain) and torch.allclose(ours, plain, atol=3e-2)  # bf16 windows, fp32 blend
    else:
        assert torch.equal(ours, plain)


@pytest.mark.parametrize("native", [True, False])
def test_training_inferer_autocasts_and_hands_the_loss_fp32(monkeypatch, native):
    """Fine-tuning on a native-bf16 CPU runs the network in bf16 (MONAI's trainer autocasts only on CUDA), the loss
    sees fp32 outputs and gradients reach the fp32 weights."""
    monkeypatch.setattr(inferers, "native_bf16", lambda device: native)
    net = Probe()
    out = CPUAutocastSimpleInferer(cpu_amp=True)(torch.rand(2, 1, 8, 8, 8), net)
    assert net.autocast_seen == [native] and out.dtype == torch.float32
    out.square().mean().backward()
    assert net.conv.weight.grad is not None and net.conv.weight.grad.dtype == torch.float32


def test_bundles_train_with_the_autocast_inferer():
    """train.json of every segmentation bundle hands ``amp`` to a CPU-autocast training inferer."""
    from bundle_utils import segmentation_bundles, make_workflow
    for bundle in segmentation_bundles():
        workflow = make_workflow(bundle, ["train.json"], amp=True)
        inferer = workflow.parser.get_parsed_content("train#inferer")
        assert isinstance(inferer, CPUAutocastSimpleInferer) and inferer.cpu_amp, bundle
