"""The two steps the bench times, built once here for every part (CPU rows, MFU, GPU):

- the library's step: ``pretrain.train_step`` (the arm's augmented views and objective) with the
  optimizer of ``optim.build_optimizer``, in ``pretrain.pretrain``'s order (train_step,
  zero_grad, backward, step): what training runs, less the loop around it. Its logged terms
  (train_step's second value) are never read: reading them is the loop's business, and whether
  they are floats or device tensors is the library's;
- the bare reference: a torchvision ResNet with the profile's stem and the same projector, built
  here (not through ``embreg.models``), forward + backward + the same optimizer on two ready
  views, loss = the sum of the outputs, at the profile's precision (bf16 autocast) and memory
  format (channels_last): the floor a plain training loop would reach on this machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from embreg.bench.timing import Measure, timed
from embreg.config import RunConfig
from embreg.data import Normalizer, two_views
from embreg.models import EmbeddingModel, build_model, projector
from embreg.optim import build_optimizer
from embreg.pretrain import augment_spec, train_step

Step = Callable[[], None]


class BareNet(nn.Module):
    """torchvision ResNet (fc removed; stem as the profile's: CIFAR 3x3/1 without max-pool, or
    ImageNet 7x7/2, for the dataset's channels) + the projector. (b, c, h, w) -> (b, d)"""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        net = getattr(torchvision.models, cfg.backbone.name)(weights=None)
        c = cfg.dataset.in_channels
        if cfg.backbone.stem == "cifar":
            net.conv1, net.maxpool = nn.Conv2d(c, 64, 3, 1, 1, bias=False), nn.Identity()
        else:
            net.conv1 = nn.Conv2d(c, 64, 7, 2, 3, bias=False)
        feat_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net, self.projector = net, projector(feat_dim, list(cfg.backbone.projector))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.net(x))


def memory_format(cfg: RunConfig) -> torch.memory_format:
    return torch.channels_last if cfg.backbone.channels_last else torch.contiguous_format


def bare_model(cfg: RunConfig, device: torch.device | str = "cpu") -> BareNet:
    """The bare reference network, seeded like a run, in training mode."""
    torch.manual_seed(cfg.seed)
    return BareNet(cfg).to(device, memory_format=memory_format(cfg)).train()


def library_model(cfg: RunConfig, device: torch.device | str = "cpu") -> EmbeddingModel:
    """The run's own network (``build_model``), seeded like a run, in training mode."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes, cfg.objective).to(device).train()


def synthetic_images(cfg: RunConfig, n: int, gen: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, c, h, w) random uint8 images of the dataset's shape (timing needs no real data)."""
    ds = cfg.dataset
    x = torch.randint(0, 256, (n, ds.in_channels, ds.image_size, ds.image_size), dtype=torch.uint8, generator=gen)
    return x.to(device)


def ready_views(cfg: RunConfig, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views of ``x`` made once, in the network's memory format (the bare step's input)."""
    v1, v2 = two_views(x, augment_spec(cfg), Normalizer(cfg.dataset.mean, cfg.dataset.std), gen)
    return v1.contiguous(memory_format=memory_format(cfg)), v2.contiguous(memory_format=memory_format(cfg))


def library_step(cfg: RunConfig, model: EmbeddingModel, x: torch.Tensor, y: torch.Tensor | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> tuple[Step, Step]:
    """The library's step on the batch ``x`` (uint8, on the model's device), and its
    forward+backward alone (for counting FLOPs). ``optimizer``: the run's (default: built
    here by ``build_optimizer``)."""
    opt = optimizer or build_optimizer(model, cfg.optim)
    norm, gen = Normalizer(cfg.dataset.mean, cfg.dataset.std), torch.Generator().manual_seed(cfg.seed)
    labels = torch.zeros(len(x), dtype=torch.long, device=x.device) if y is None else y  # unused by SSL arms

    def fwd_bwd() -> None:
        loss, _ = train_step(model, x, labels, cfg, norm, gen)  # the logged terms: opaque, never read
        opt.zero_grad(set_to_none=True)
        loss.backward()

    def step() -> None:
        fwd_bwd()
        opt.step()

    return step, fwd_bwd


def bare_step(cfg: RunConfig, model: nn.Module, views: tuple[torch.Tensor, torch.Tensor],
              optimizer: torch.optim.Optimizer | None = None) -> tuple[Step, Step]:
    """The bare reference's step on ready views (loss = sum of both views' outputs, in float32),
    and its forward+backward alone. ``optimizer`` default: ``build_optimizer``'s, as the run's."""
    opt = optimizer or build_optimizer(model, cfg.optim)
    v1, v2 = views
    bf16 = cfg.pretrain.precision == "bf16"

    def fwd_bwd() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(v1.device.type, dtype=torch.bfloat16, enabled=bf16):
            z1, z2 = model(v1), model(v2)
        (z1.float().sum() + z2.float().sum()).backward()

    def step() -> None:
        fwd_bwd()
        opt.step()

    return step, fwd_bwd


def fresh_median(build: Callable[[], Step], steps: int) -> Measure:
    """One measurement: a fresh network and optimizer (``build``), one warm-up step (allocator,
    primitive caches: pretrain's cost leaves its first step out too), then the median of
    ``steps - 1`` timed steps (at least one)."""

    def measure() -> float:
        step = build()
        step()
        return statistics.median(timed(step)() for _ in range(max(1, steps - 1)))

    return measure


def block(step: Step, n: int, sync: Callable[[], None]) -> Measure:
    """One measurement: ``n`` steps back to back (a device keeps its queue full), seconds per
    step, the device waited for at both ends."""

    def measure() -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        return (time.perf_counter() - t0) / n

    return measure
