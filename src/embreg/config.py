"""Typed configuration: the dataclass schemas that the YAML in conf/ is validated against.

Only entry points (pipelines/, ``embreg.train``) see Hydra's DictConfig (``to_run_config``). Names a
registry owns (datasets, backbones, SVMax forms) are checked when a run starts (``embreg.run.validate``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from embreg.ablation import AblationConfig
from embreg.registry import check_choice

OBJECTIVE_KINDS = ("ssl", "supervised", "untrained", "pixels", "metric")
TRAINED_KINDS = ("ssl", "supervised", "metric")  # the kinds that pretrain a network
SPACES = ("raw", "l2")
LAYERS = ("last", "all")
PRECISIONS = ("fp32", "bf16")


@dataclass
class DatasetConfig:
    name: str = "fashion_mnist"
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    # per-channel statistics of the training split, used to standardize inputs
    mean: list[float] = field(default_factory=lambda: [0.2860])
    std: list[float] = field(default_factory=lambda: [0.3530])
    # label fractions for semi-supervised evaluation; prepare writes one index file each
    subset_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])
    subset_seed: int = 0
    # pretrain the SSL arms on train + the unlabeled split (STL-10's 100k); all else: labelled train only
    pretrain_unlabeled: bool = False
    # pretraining augmentation (embreg.data.augment.AugmentSpec): random-resized-crop scale range
    crop_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])
    flip: bool = True  # garments are left/right symmetric; digits would not be
    # colour jitter (p 0.8, brightness/contrast 0.4 as in VICReg) + saturation, hue; grayscale; blur and
    # solarization per view (the views differ, as in BYOL / VICReg). 0 turns one off and draws nothing.
    saturation: float = 0.0
    hue: float = 0.0
    grayscale_prob: float = 0.0
    blur_prob: list[float] = field(default_factory=lambda: [0.0, 0.0])
    solarize_prob: list[float] = field(default_factory=lambda: [0.0, 0.0])


@dataclass
class BackboneConfig:
    name: str = "resnet18"
    # imagenet: 7x7/2 conv + max-pool (cheap on 28x28); cifar: 3x3/1 conv, no max-pool
    stem: str = "imagenet"
    projector: list[int] = field(default_factory=lambda: [1024, 1024, 1024])
    channels_last: bool = True  # about 1.3x faster on CPU for these small maps (measured)


@dataclass
class ObjectiveConfig:
    """Which loss terms an arm trains with (embreg.terms), their coefficients and parameters, in
    which space and on which layers."""

    name: str = "vicreg"
    # ssl | supervised (cross-entropy, a reference) | untrained (random init, evaluated as is) |
    # pixels (no network: probe and kNN on the standardized raw pixels, a reference) | metric (a
    # contrastive loss on the first half of the classes, recall@k on the other half: the SVMax paper's)
    kind: str = "ssl"
    space: str = "raw"  # raw: VICReg's own space; l2: rows l2-normalized first (SVMax's space)
    # term -> coefficient (>= 0); a term absent or at 0 is not trained (it may still be logged)
    terms: dict[str, float] = field(default_factory=dict)
    # term -> its parameters, e.g. {variance: {gamma: 1.0}}; absent ones take the term's defaults
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    layers: str = "last"  # last: final embedding only; all: also every stage's pooled output
    # all: each stage's regularizers times this weight on top of the final embedding's (full) ones
    layer_weight: float = 1.0

    def trained(self) -> dict[str, float]:
        """The terms this arm trains with (coefficient > 0), as written."""
        return {k: v for k, v in self.terms.items() if v > 0}

    def validate(self) -> None:
        check_choice("objective kind", self.kind, OBJECTIVE_KINDS)
        check_choice("embedding space", self.space, SPACES)
        check_choice("layer setting", self.layers, LAYERS)
        for term, value in self.terms.items():
            if not value >= 0:  # also catches NaN
                raise ValueError(f"coefficient objective.terms.{term} must be >= 0, got {value}")
        if not 0 <= self.layer_weight < math.inf:  # also catches NaN
            raise ValueError(f"objective.layer_weight must be finite and >= 0, got {self.layer_weight}")


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd / lars
    batch_size: int = 256
    warmup_epochs: int = 0
    lars_eta: float = 0.001


@dataclass
class PretrainConfig:
    epochs: int = 10
    # None: an epoch is one pass over the training set; an int: that many steps drawn from a seeded
    # permutation of the whole set (small profiles see all 60k images, checkpoint every epoch)
    steps_per_epoch: int | None = None
    # the supervised reference's epochs (None: the arms'); a short profile trains it longer, so that
    # it is an upper reference (above the raw-pixel probe), not another under-trained network
    supervised_epochs: int | None = None
    # fp32, or bf16: the network's forward under bf16 autocast (GPU profiles); the regularizers
    # always see float32 embeddings (SVMax's eigenproblem runs in float64)
    precision: str = "fp32"
    # the terms an arm does not train with (logged only) are computed every this many steps, their
    # epoch means over those: SVMax's eigensolver waits for a GPU, so GPU profiles space them out
    monitor_every: int = 1


@dataclass
class EvalConfig:
    probe_train_size: int | None = None  # None: all training images
    test_size: int | None = None  # None: the whole test split; N: a fixed (seed 0) subset of N test images
    probe_epochs: int = 100
    probe_lr: float = 0.02
    probe_batch_size: int = 256
    # False: the classifier trains on cached features of the un-augmented images, standardized
    # (small profiles); True: the official protocol, random-resized-crop + flip every epoch through
    # the frozen backbone (eval mode), raw features, head initialized N(0, 0.01)
    probe_augment: bool = False
    knn_k: list[int] = field(default_factory=lambda: [20, 200])
    knn_temperature: float = 0.07
    semi_supervised: bool = True
    finetune_epochs: list[float] = field(default_factory=lambda: [20.0, 20.0])  # per label fraction
    finetune_lr_backbone: list[float] = field(default_factory=lambda: [0.03, 0.01])
    finetune_lr_head: list[float] = field(default_factory=lambda: [0.08, 0.1])
    # the batch size those learning rates are for (the papers'); a run at another batch size
    # scales them linearly (embreg.evaluate.finetune_lr_scale)
    finetune_lr_batch: int = 256
    finetune_batch_size: int = 256
    # random-resized-crop scale of the fine-tuning views (plus a flip); the official code: 0.08-1
    finetune_crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    feature_batch_size: int = 1024
    spectrum_size: int = 64  # leading singular values kept for the spectra plot


@dataclass
class ProfileConfig:
    name: str = "default"
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    sweep_seeds: list[int] = field(default_factory=lambda: [0, 1])  # the sensitivity points' seeds
    device: str = "cpu"
    # the references in every table: raw pixels (the streaming ImageNet profiles leave it out), random init, supervised
    baselines: list[str] = field(default_factory=lambda: ["pixels", "random_init", "supervised"])
    # the ablations (conf/ablation) the sweep runs; the robustness studies have a profile of their own
    ablations: list[str] = field(default_factory=lambda: ["anticollapse", "covariance", "layers"])


@dataclass
class PathsConfig:
    data: str = "data"
    results: str = "results/default"
    checkpoints: str = "checkpoints/default"


@dataclass
class RuntimeConfig:
    threads: int = 0  # torch intra-op threads; 0: one per core this process may run on (its affinity)
    progress: bool = True
    # logged terms stay on the device, read (a wait for a GPU) every this many steps, at epoch ends
    log_every: int = 50
    checkpoint_every_s: float = 300.0  # at least this often, at epoch ends and on USR2/TERM; 0: every step
    # runs sharing this run's GPU at once (the local launcher sets it to its jobs per GPU): each
    # keeps its training set on the GPU only within its share of the budget (pretrain.DEVICE_DATA_BYTES)
    jobs_per_gpu: int = 1
    # true (the sweep's jobs): a finished run of another config in this run's directory is replaced;
    # false (a run by hand): refused, so a hand run never overwrites a result it was not meant for
    replace: bool = False


@dataclass
class RunConfig:
    """Everything one training run (arm x seed) needs."""

    arm: str = "vicreg"  # chosen with objective=<name>; conf/config.yaml sets arm to its name
    seed: int = 0
    # swept keys that become part of the run's name, e.g. [objective.terms.svmax] -> svmax@svmax=0.3
    tag_keys: list[str] = field(default_factory=list)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    ablation: AblationConfig | None = None  # set only when a sweep reads an ablation

    def validate(self) -> None:
        """The checks this schema owns; ``embreg.run.validate`` adds the registries' names."""
        self.objective.validate()
        check_choice("precision", self.pretrain.precision, PRECISIONS)
        if self.optim.batch_size < 2:
            raise ValueError(f"optim.batch_size must be >= 2, got {self.optim.batch_size}")
        if self.pretrain.supervised_epochs is not None and self.pretrain.supervised_epochs < 1:
            raise ValueError(f"pretrain.supervised_epochs must be >= 1 or null, got {self.pretrain.supervised_epochs}")
        for key in ("blur_prob", "solarize_prob"):
            probs = getattr(self.dataset, key)
            if len(probs) != 2 or not all(0 <= p <= 1 for p in probs):
                raise ValueError(f"dataset.{key} needs two probabilities in [0, 1] (one per view), got {probs}")
        n_frac = len(self.dataset.subset_fractions)
        for key in ("finetune_epochs", "finetune_lr_backbone", "finetune_lr_head"):
            if len(getattr(self.eval, key)) != n_frac:
                raise ValueError(f"eval.{key} needs one entry per label fraction ({n_frac})")

    def science(self) -> dict[str, Any]:
        """The part of the config that changes results (paths and runtime do not)."""
        d = asdict(self)
        for key in ("paths", "runtime", "ablation", "tag_keys"):
            d.pop(key)
        # which seeds and ablations a sweep selects changes no run: the run's own seed is recorded
        for key in ("seeds", "sweep_seeds", "baselines", "ablations"):
            d["profile"].pop(key)
        obj = d["objective"]  # only what trains: a term at 0 (logged at most) changes no network
        obj["terms"] = {k: v for k, v in obj["terms"].items() if v > 0}
        obj["params"] = {k: v for k, v in obj["params"].items() if k in obj["terms"]}
        return d



AblationConfig.run_schema = RunConfig  # the schema its sweep keys are typed by (embreg.ablation)


def register_configs() -> None:
    """Put the root schema in Hydra's ConfigStore: conf/config.yaml lists it first, so every
    group (dataset, backbone, objective, ...) is type-checked against its dataclass on load."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)


def to_run_config(cfg: Any) -> RunConfig:
    """Resolve and convert a composed Hydra config (a DictConfig) into the typed dataclass."""
    from omegaconf import OmegaConf

    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, RunConfig):
        raise TypeError(f"a composed run config must be a RunConfig, got {type(obj).__name__}")
    return obj
