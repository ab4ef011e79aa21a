"""Complete validation of a run's config, before anything is written or deleted: ``problems`` lists
every violation at once, one line each (key, value, what is allowed); ``data_problems`` the batch vs
the training split. ``validate`` raises them as one ConfigError; the sweep checks its plan."""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from embreg.config import (
    LAYERS,
    OBJECTIVE_KINDS,
    PRECISIONS,
    SPACES,
    TRAINED_KINDS,
    ObjectiveConfig,
    RunConfig,
)
from embreg.registry import UnknownNameError

DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


class ConfigError(UnknownNameError):
    """A config that must not run, one line per problem (an UnknownNameError: a ValueError too)."""


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)

def _bad(key: str, value: Any, allowed: str) -> str:
    return f"{key}={value}: {allowed}"


class _Collector:
    def __init__(self) -> None:
        self.out: list[str] = []  # one line per problem

    def number(self, key: str, v: Any, lo: float, hi: float = math.inf, lo_open: bool = False,
               integer: bool = False) -> None:
        """``v`` finite (an int when ``integer``) within [lo, hi] (or (lo, hi] when ``lo_open``)."""
        kind = "an integer" if integer else "a finite number"
        ok = _num(v) and math.isfinite(v) and (not integer or float(v).is_integer())
        ok = ok and (v > lo if lo_open else v >= lo) and v <= hi
        if not ok:
            rng = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi != math.inf else "")
            self.out.append(_bad(key, v, f"must be {kind} {rng}"))

    def choice(self, key: str, v: Any, valid: list[str] | tuple[str, ...]) -> None:
        if v not in valid:
            self.out.append(_bad(key, v, f"unknown; valid: {', '.join(valid)}"))

    def length(self, key: str, v: list, n: int, what: str) -> bool:
        if len(v) != n:
            self.out.append(_bad(key, v, f"needs {n} entries ({what})"))
            return False
        return True


def problems(cfg: RunConfig) -> list[str]:
    """Every rule ``cfg`` breaks, one line each (empty: the config may run). Static: reads no data."""
    from embreg.data import DATASETS
    from embreg.models import BACKBONES, STEMS
    from embreg.optim import OPTIMIZERS

    c = _Collector()
    ds, obj, opt, ev = cfg.dataset, cfg.objective, cfg.optim, cfg.eval
    c.number("seed", cfg.seed, 0, integer=True)
    c.choice("dataset.name", ds.name, DATASETS.names())
    c.number("dataset.num_classes", ds.num_classes, 2, integer=True)
    c.number("dataset.in_channels", ds.in_channels, 1, integer=True)
    c.number("dataset.image_size", ds.image_size, 1, integer=True)
    for key in ("mean", "std"):
        vals = getattr(ds, key)
        if c.length(f"dataset.{key}", vals, ds.in_channels, "one per input channel"):
            for i, v in enumerate(vals):
                c.number(f"dataset.{key}[{i}]", v, 0, lo_open=key == "std")
    for i, f in enumerate(ds.subset_fractions):
        c.number(f"dataset.subset_fractions[{i}]", f, 0, 1, lo_open=True)
    _scale(c, "dataset.crop_scale", ds.crop_scale)
    c.number("dataset.saturation", ds.saturation, 0, 1)
    c.number("dataset.hue", ds.hue, 0, 0.5)
    c.number("dataset.grayscale_prob", ds.grayscale_prob, 0, 1)
    for key in ("blur_prob", "solarize_prob"):
        probs = getattr(ds, key)
        if c.length(f"dataset.{key}", probs, 2, "one probability per view"):
            for i, p in enumerate(probs):
                c.number(f"dataset.{key}[{i}]", p, 0, 1)
    if ds.pretrain_unlabeled and ds.name in DATASETS and DATASETS.get(ds.name).unlabeled is None:
        c.out.append(_bad("dataset.pretrain_unlabeled", True, f"dataset {ds.name!r} has no unlabeled split"))
    c.choice("backbone.name", cfg.backbone.name, BACKBONES.names())
    c.choice("backbone.stem", cfg.backbone.stem, STEMS)
    for i, w in enumerate(cfg.backbone.projector or [0]):  # at least one layer width
        c.number(f"backbone.projector[{i}]", w, 1, integer=True)
    c.choice("objective.kind", obj.kind, OBJECTIVE_KINDS)
    c.choice("objective.space", obj.space, SPACES)
    c.choice("objective.layers", obj.layers, LAYERS)
    c.out += term_problems(obj)
    c.number("objective.layer_weight", obj.layer_weight, 0)
    c.choice("optim.name", opt.name, OPTIMIZERS.names())
    c.number("optim.lr", opt.lr, 0, lo_open=True)
    c.number("optim.weight_decay", opt.weight_decay, 0)
    c.number("optim.momentum", opt.momentum, 0, 1)
    c.number("optim.batch_size", opt.batch_size, 2, integer=True)
    c.number("optim.warmup_epochs", opt.warmup_epochs, 0, integer=True)
    c.number("optim.lars_eta", opt.lars_eta, 0, lo_open=True)
    if obj.kind in TRAINED_KINDS:  # random init and pixels train nothing on purpose
        c.number("pretrain.epochs", cfg.pretrain.epochs, 1, integer=True)
    for key in ("steps_per_epoch", "monitor_every"):  # steps_per_epoch may be None: one pass
        if getattr(cfg.pretrain, key) is not None:
            c.number(f"pretrain.{key}", getattr(cfg.pretrain, key), 1, integer=True)
    c.choice("pretrain.precision", cfg.pretrain.precision, PRECISIONS)
    if ev.probe_train_size is not None:
        c.number("eval.probe_train_size", ev.probe_train_size, 1, integer=True)
    if ev.test_size is not None:  # kNN and recall@k need a query and one more image
        c.number("eval.test_size", ev.test_size, 2, integer=True)
    c.number("eval.probe_epochs", ev.probe_epochs, 1, integer=True)
    c.number("eval.probe_lr", ev.probe_lr, 0, lo_open=True)
    for key in ("probe_batch_size", "finetune_batch_size", "feature_batch_size", "spectrum_size"):
        c.number(f"eval.{key}", getattr(ev, key), 1, integer=True)
    for i, k in enumerate(ev.knn_k or [0]):  # at least one k
        c.number(f"eval.knn_k[{i}]", k, 1, integer=True)
    c.number("eval.knn_temperature", ev.knn_temperature, 0, lo_open=True)
    n_frac = len(ds.subset_fractions)
    for key in ("finetune_epochs", "finetune_lr_backbone", "finetune_lr_head"):
        vals = getattr(ev, key)
        if c.length(f"eval.{key}", vals, n_frac, "one per label fraction in dataset.subset_fractions"):
            for i, v in enumerate(vals):
                c.number(f"eval.{key}[{i}]", v, 0, lo_open=True)
    _scale(c, "eval.finetune_crop_scale", ev.finetune_crop_scale)
    if not DEVICE.match(str(cfg.profile.device)):
        c.out.append(_bad("profile.device", cfg.profile.device, "must be cpu, cuda, cuda:<index> or mps"))
    c.number("runtime.threads", cfg.runtime.threads, 0, integer=True)
    c.number("runtime.log_every", cfg.runtime.log_every, 1, integer=True)
    c.number("runtime.checkpoint_every_s", cfg.runtime.checkpoint_every_s, -math.inf)
    science = asdict(cfg)
    for key in cfg.tag_keys:
        node: Any = science
        for part in key.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is KeyError:
            c.out.append(_bad("tag_keys", key, "each must be a dotted key of the config, e.g. objective.terms.svmax"))
    c.out += path_problems(cfg)
    return c.out


def term_problems(obj: ObjectiveConfig) -> list[str]:
    """The objective's terms against the registry (embreg.terms): known names, coefficients >= 0,
    each trained term fitting the arm's kind, parameters known and valid; an arm of a training
    kind trains at least one term (the supervised reference trains its cross-entropy)."""
    from embreg import terms as T

    c, known = _Collector(), T.load()
    for name, coeff in obj.terms.items():
        if name not in known:
            c.out.append(_bad(f"objective.terms.{name}", coeff, f"unknown loss term; valid: {', '.join(T.names())}"))
            continue
        c.number(f"objective.terms.{name}", coeff, 0)
        kinds = known.get(name).kinds
        if _num(coeff) and coeff > 0 and obj.kind not in kinds:
            c.out.append(_bad(f"objective.terms.{name}", coeff, f"term {name!r} fits objective kinds "
                              f"{', '.join(kinds)}, not {obj.kind!r}"))
    for name, given in obj.params.items():
        if name not in known:
            c.out.append(_bad(f"objective.params.{name}", given, f"unknown loss term; valid: {', '.join(T.names())}"))
        elif not isinstance(given, dict):
            c.out.append(_bad(f"objective.params.{name}", given, "must be a mapping of the term's parameters"))
        else:
            c.out += known.get(name).problems(given, f"objective.params.{name}")
    if obj.kind in ("ssl", "metric") and not any(_num(v) and v > 0 for v in obj.terms.values()):
        c.out.append(_bad("objective.terms", dict(obj.terms), "an ssl or metric arm trains at least one term "
                          "(a coefficient > 0)"))
    return c.out


def _scale(c: _Collector, key: str, v: list[float]) -> None:  # a (low, high) crop-scale range
    if c.length(key, v, 2, "a (low, high) scale range"):
        c.number(f"{key}[0]", v[0], 0, 1, lo_open=True)
        c.number(f"{key}[1]", v[1], 0, 1, lo_open=True)
        if _num(v[0]) and _num(v[1]) and v[0] > v[1]:
            c.out.append(_bad(key, v, "low must be <= high"))


def path_problems(cfg: RunConfig) -> list[str]:
    """``paths.results`` / ``.checkpoints``: writable directories (or creatable); a file in the way is named."""
    out = []
    for key in ("results", "checkpoints"):
        path = Path(getattr(cfg.paths, key))
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            out.append(_bad(f"paths.{key}", path, f"{probe} is a file, not a directory; choose another path"))
        elif not os.access(probe, os.W_OK | os.X_OK):
            out.append(_bad(f"paths.{key}", path, f"{probe} is not writable"))
    return out


@lru_cache(maxsize=8)
def train_size(data_dir: str, name: str) -> int:
    """The number of images in the prepared training split (read once per process)."""
    from embreg.data import DataUnavailableError, load_split

    try:
        return len(load_split(data_dir, name, train=True))
    except DataUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt prepared file
        raise DataUnavailableError(
            f"cannot read the prepared {name} under {Path(data_dir) / name} ({type(exc).__name__}: "
            f"{str(exc)[:200]}); delete that folder and run `dvc repro prepare` again") from None


def data_problems(cfg: RunConfig) -> list[str]:
    """The batch must fit in the prepared training split (DataUnavailableError when unreadable)."""
    n = train_size(str(cfg.paths.data), cfg.dataset.name)
    if cfg.objective.kind in TRAINED_KINDS and _num(cfg.optim.batch_size) and cfg.optim.batch_size > n:
        return [_bad("optim.batch_size", cfg.optim.batch_size,
                     f"must be <= the {n} images of {cfg.dataset.name}'s training split")]
    return []


def validate(cfg: RunConfig, with_data: bool = True) -> None:
    """Raise ConfigError listing every problem of ``cfg`` (data-aware ones too unless told not to)."""
    found = problems(cfg)
    if with_data and not found:
        found = data_problems(cfg)
    if found:
        raise ConfigError("invalid config: " + "; ".join(found))
