"""`embreg collapse`: audit any trained network's embedding for collapse, layer by layer.

SVMax's paper suggests its mean singular value (s_mu, bounded by L and U) as a post-hoc metric
for any network, regularized or not. This module applies the suite's own collapse metrics
(embreg.metrics: s_mu with L and U, the normalized score, RankMe, dead dimensions, mean |corr|)
to the pooled output of each ResNet stage, and the projector's when there is one, over a
prepared split of a dataset the suite knows.

What it reads:
- a run of this suite: its run directory (``results/<profile>/runs/<run id>/seed<k>``, whose
  config.yaml names the checkpoint, dataset and data folder) or its checkpoint (``last.pt``);
- a plain torchvision ResNet ``state_dict`` file (``torch.save(model.state_dict(), path)``).

The architecture is read from the weights (ResNet depth, stem, input channels, projector
widths), never assumed. A 3-channel network audited on a grey dataset sees the grey channel
three times, as is usual; other channel mismatches are refused.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf

from embreg.config import BackboneConfig, DatasetConfig, RunConfig
from embreg.data import DataUnavailableError, load_split
from embreg.data.augment import Normalizer
from embreg.evaluate import extract, probe_subset
from embreg.io import write_json, write_text
from embreg.metrics import collapse_metrics
from embreg.models import TAP_NAMES, build_model
from embreg.params import compose_run
from embreg.registry import UnknownNameError, check_choice
from embreg.rundir import checkpoint_path, run_id

SPLITS = ("test", "train")
# blocks per stage of the ResNets the suite builds (torchvision's layouts)
DEPTHS = {("basic", (2, 2, 2, 2)): "resnet18", ("bottleneck", (3, 4, 6, 3)): "resnet50"}
METRICS = ("s_mu", "s_mu_lower", "s_mu_upper", "s_mu_score", "rankme", "frac_dead_dims", "mean_abs_corr")


class CheckpointError(ValueError):
    """A file that is not a checkpoint this command can audit; the message says why, in one line."""


@dataclass
class Network:
    """What the weights say: the backbone to build and its input channels."""

    backbone: BackboneConfig
    in_channels: int
    num_classes: int
    source: str  # "suite run" | "torchvision state_dict"


def _load_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {str(exc)[:160]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict or a checkpoint of this suite")
    return obj


def model_state(obj: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The EmbeddingModel state_dict inside a suite checkpoint, or one made from a plain
    torchvision ResNet state_dict (its fc dropped: the audit reads features, not logits)."""
    if isinstance(obj.get("model"), dict):  # this suite's last.pt
        obj = obj["model"]
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("backbone.net.") for k in state):
        return state, "suite run"
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return {f"backbone.net.{k}": v for k, v in state.items() if not k.startswith("fc.")}, "torchvision state_dict"
    sample = ", ".join(list(state)[:4]) or "none"
    raise CheckpointError(f"not a ResNet state_dict nor a checkpoint of this suite (no conv1.weight / layer1.0.conv1.weight; "
                          f"first keys: {sample})")


def infer_network(state: dict[str, torch.Tensor], source: str) -> Network:
    """Read the architecture from the weights: depth, stem, input channels, projector widths."""
    net = "backbone.net."
    kind = "bottleneck" if f"{net}layer1.0.conv3.weight" in state else "basic"
    blocks = tuple(len({k.split(".")[3] for k in state if k.startswith(f"{net}{layer}.")}) for layer in TAP_NAMES)
    name = DEPTHS.get((kind, blocks))
    if name is None:
        known = "; ".join(f"{n} ({k}, blocks {list(b)})" for (k, b), n in DEPTHS.items())
        raise CheckpointError(f"a ResNet with {kind} blocks {list(blocks)} per stage is not one the suite builds: {known}")
    conv1 = state[f"{net}conv1.weight"]
    stem = {7: "imagenet", 3: "cifar"}.get(int(conv1.shape[-1]))
    if stem is None:
        raise CheckpointError(f"conv1 is {conv1.shape[-1]}x{conv1.shape[-1]}; the suite's stems are 7x7 (imagenet) and 3x3 (cifar)")
    # the projector's Linear layers are its 2-D weights, in order (BatchNorm weights are 1-D)
    linear = sorted((int(k.split(".")[1]), v.shape[0]) for k, v in state.items()
                    if k.startswith("projector.") and k.endswith(".weight") and v.dim() == 2)
    head = state.get("head.weight")
    return Network(BackboneConfig(name=name, stem=stem, projector=[w for _, w in linear], channels_last=False),
                   int(conv1.shape[1]), int(head.shape[0]) if head is not None else 1, source)


def dataset_config(name: str) -> DatasetConfig:
    """conf/dataset/<name>.yaml, composed and typed as every run's is (an unknown name lists the known ones)."""
    return compose_run("default", [f"dataset={name}"]).dataset


class GreyToRGB:
    """The dataset's standardization, then the grey channel repeated three times."""

    def __init__(self, norm: Normalizer) -> None:
        self.norm = norm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x).expand(-1, 3, -1, -1)


def layer_names(net: Network) -> list[str]:
    return [*TAP_NAMES, *(["projector"] if net.backbone.projector else [])]


def audit(
    checkpoint: Path,
    dataset: str,
    data_dir: Path,
    split: str = "test",
    layers: list[str] | None = None,
    samples: int | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Collapse metrics of each requested layer's embedding of ``split``: {"layers": {name:
    metrics}, "n": images used, ...}. ``samples`` takes a fixed (seed 0) random subset."""
    check_choice("split", split, SPLITS)
    state, source = model_state(_load_file(checkpoint))
    net = infer_network(state, source)
    valid = layer_names(net)
    for layer in layers or []:
        check_choice("layer", layer, valid)
    ds = dataset_config(dataset)
    if net.in_channels != ds.in_channels and not (net.in_channels == 3 and ds.in_channels == 1):
        raise CheckpointError(f"the network's conv1 takes {net.in_channels}-channel images; {dataset}'s have "
                              f"{ds.in_channels} (only grey images may be fed to a 3-channel network, repeated)")
    model = build_model(net.backbone, net.in_channels, net.num_classes)
    state = {k: v for k, v in state.items() if not k.startswith("heads.")}  # loss terms' heads: not measured
    if "head.weight" not in state:  # a torchvision file or a backbone alone: the head is never used here
        state = {**state, **{f"head.{k}": v for k, v in model.head.state_dict().items()}}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)[:200]]
        raise CheckpointError(f"the weights do not fit a {net.backbone.name} ({net.backbone.stem} stem): "
                              f"{first[0].strip()[:240]}") from None
    if samples is not None and samples < 2:
        raise ValueError(f"samples={samples}: the metrics need at least 2 images")
    # the same fixed (seed 0) subset rule as the probe's images
    data = probe_subset(load_split(data_dir, dataset, train=split == "train", image_size=ds.image_size), samples)
    norm = Normalizer(ds.mean, ds.std)
    if net.in_channels == 3 and ds.in_channels == 1:
        norm = GreyToRGB(norm)
    feats = extract(model, data, norm, batch_size, taps=True)
    feats["layer4"] = feats.pop("backbone")
    out: dict[str, Any] = {}
    for layer in layers or valid:
        e = feats[layer]
        m = collapse_metrics(e)
        out[layer] = {"n": int(e.shape[0]), "dim": int(e.shape[1]),
                      "regime": "n > d" if e.shape[0] > e.shape[1] else "n <= d", **{k: m[k] for k in METRICS}}
    return {"checkpoint": str(checkpoint), "source": net.source, "backbone": net.backbone.name,
            "stem": net.backbone.stem, "in_channels": net.in_channels, "dataset": dataset, "split": split,
            "n": len(data), "layers": out}


def to_markdown(report: dict[str, Any]) -> str:
    head = ("| layer | n | d | s_mu | L | U | score | RankMe | dead dims | mean abs corr |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [f"| {name} | {m['n']} | {m['dim']} | {m['s_mu']:.4f} | {m['s_mu_lower']:.4f} | {m['s_mu_upper']:.4f} | "
            f"{m['s_mu_score']:.3f} | {m['rankme']:.1f} | {100 * m['frac_dead_dims']:.1f}% | {m['mean_abs_corr']:.3f} |"
            for name, m in report["layers"].items()]
    return (f"# Collapse audit: {report['checkpoint']}\n\n"
            f"{report['backbone']} ({report['stem']} stem, {report['in_channels']}-channel input; {report['source']}), "
            f"the {report['split']} split of {report['dataset']}, n = {report['n']} images.\n\n"
            "s_mu: the mean singular value of the l2-normalized embedding rows; L and U its bounds for this n and d "
            "(SVMax, Taha et al. 2021); score = (s_mu - L) / (U - L), 0 for a collapse to one direction, 1 for the "
            "widest spread possible. RankMe: exp of the entropy of the raw embedding's singular values. Dead dims: "
            "dimensions whose std is below 0.01. Mean abs corr: mean |correlation| between two dimensions.\n\n"
            + head + "\n" + "\n".join(rows) + "\n")


def _from_run_dir(run: Path) -> tuple[Path, str, Path]:
    """A run directory's checkpoint (where the run itself put it), dataset and data folder, from its config.yaml."""
    raw = yaml.safe_load((run / "config.yaml").read_text())
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), raw))
    if cfg.objective.kind in ("untrained", "pixels"):
        raise CheckpointError(f"run {run_id(cfg)} seed{cfg.seed} is a reference ({cfg.objective.kind}) "
                              "with no trained checkpoint")
    return checkpoint_path(cfg), cfg.dataset.name, Path(cfg.paths.data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="embreg collapse", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a run directory of this suite, its last.pt, or a torchvision ResNet state_dict file")
    p.add_argument("--dataset", help="a dataset under conf/dataset (default: the run's; fashion_mnist for a plain file)")
    p.add_argument("--data-dir", type=Path, help="where `dvc repro prepare` put the datasets (default: the run's, else data)")
    p.add_argument("--split", default="test", help=f"one of {', '.join(SPLITS)} (default: test)")
    p.add_argument("--layers", help="comma-separated: layer1..layer4, projector (default: every one the network has)")
    p.add_argument("--samples", type=int, help="audit a fixed random subset of this many images (default: the whole split)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", type=Path, help="write <out>.json and <out>.md (default: collapse-<name> in the current folder)")
    args = p.parse_args(argv)
    try:
        ckpt, dataset, data_dir = args.checkpoint, "fashion_mnist", Path("data")
        if args.checkpoint.is_dir():
            if not (args.checkpoint / "config.yaml").is_file():
                raise CheckpointError(f"{args.checkpoint} is a folder without config.yaml: not a run directory of this suite")
            ckpt, dataset, data_dir = _from_run_dir(args.checkpoint)
        report = audit(ckpt, args.dataset or dataset, args.data_dir or data_dir, args.split,
                       args.layers.split(",") if args.layers else None, args.samples, args.batch_size)
        name = (f"{args.checkpoint.parent.name}-{args.checkpoint.name}" if args.checkpoint.is_dir()
                else args.checkpoint.stem)
        out = args.out or Path(f"collapse-{name}")
        md = to_markdown(report)
        write_json(out.with_name(out.name + ".json"), report)
        write_text(out.with_name(out.name + ".md"), md)
    except (CheckpointError, UnknownNameError, DataUnavailableError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(md + f"\nwritten: {out}.json, {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
