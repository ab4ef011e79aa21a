"""Where the evaluation and the streamed crops run: the raw-pixel reference on the run's device (as
every arm's evaluation), and a streamed batch's crops, cut on the CPU, sent to the device by the
one non-blocking copy from pinned memory (``augment.to_device``). The meta device stands in for a
GPU: a tensor that reaches it was sent there."""

from __future__ import annotations

import importlib

import pytest
import torch

import embreg.evaluate as E
from embreg.data import AugmentSpec, LazyBatch, Normalizer, load_split

A = importlib.import_module("embreg.data.augment")  # the module: embreg.data.augment is also its function


def _record(devices: list[str], out: dict):
    def fake(*args, **kwargs):
        devices.extend(a.device.type for a in args if isinstance(a, torch.Tensor))
        devices.extend(v.device.type for v in (args[0].values() if isinstance(args[0], dict) else ()))
        return out
    return fake


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_the_pixels_reference_is_evaluated_on_the_configs_device(smoke_cfg, monkeypatch, device):
    cfg = smoke_cfg("objective=pixels", f"profile.device={device}")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    test = load_split(cfg.paths.data, "fashion_mnist", train=False)
    seen: dict[str, list[str]] = {"probe": [], "knn": [], "retrieval": []}
    monkeypatch.setattr(E, "linear_probe", _record(seen["probe"], {"top1": 1.0}))
    monkeypatch.setattr(E, "knn_accuracy", _record(seen["knn"], {"knn20_top1": 1.0}))
    monkeypatch.setattr(E, "retrieval", _record(seen["retrieval"], {}))
    out = E.evaluate_pixels(cfg, train, test)
    assert out == {"linear_top1": 1.0, "knn20_top1": 1.0}
    # the features (train, test) and the labels the probe is given: the features on the device
    assert seen["probe"][0] == seen["probe"][2] == device and seen["knn"][0] == seen["knn"][2] == device
    assert seen["retrieval"][-1] == device


class StreamedImages:
    """Stands in for ``LazyImages``: 10 RGB images of 16 px, decoded as a constant."""

    shape = torch.Size([10, 3, 16, 16])

    def aspect(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(idx))

    def crops(self, idx: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
        return torch.full((len(idx), 3, size, size), 128, dtype=torch.uint8)


def test_streamed_crops_reach_the_device_through_the_non_blocking_copy(monkeypatch):
    sent: list[tuple[torch.dtype, tuple[int, ...], str]] = []
    real = A.to_device

    def spy(x: torch.Tensor, device: torch.device) -> torch.Tensor:
        sent.append((x.dtype, tuple(x.shape), torch.device(device).type))
        return real(x, device)

    monkeypatch.setattr(A, "to_device", spy)
    batch = LazyBatch(StreamedImages(), torch.arange(4), torch.device("cpu"))
    spec = AugmentSpec(out_size=8)
    view = A.augment(batch, spec, Normalizer([0.5] * 3, [0.25] * 3), torch.Generator().manual_seed(0))
    assert view.shape == (4, 3, 8, 8)
    assert (torch.uint8, (4, 3, 8, 8), "cpu") in sent  # the crops, once, by to_device
