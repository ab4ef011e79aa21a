"""params.yaml (and the git-ignored params.local.yaml beside it): the pipelines' knobs, read by
one typed loader for every stage and the sweep; and composing conf/ into a typed RunConfig.

params.yaml holds one section per pipeline (``default``, ``robustness``: the stages that run it
declare it in dvc.yaml); a stage's ``PipelineParams`` carries its section's profile and knobs as
Hydra overrides. A hand run (``python -m embreg.train``) reads none of them: the profile's own.

Torch-free. The launcher defaults (local and SLURM) live here, in ``LocalParams`` and
``SlurmParams``; params.yaml and params.local.yaml override them key by key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SITE_FILE = "params.local.yaml"  # git-ignored site defaults for the launchers, beside params.yaml
LAUNCHERS = ("local", "slurm")
DEFAULT_PIPELINE = "default"  # the section the stages read without --pipeline / --profile


@dataclass(frozen=True)
class LocalParams:
    """submitit_local on this machine. Unset (null): sized by embreg.sweep.resources from the
    profile's device, so that a CPU profile runs as it always has (2 jobs at once, 1 thread
    each) and a cuda one shares each visible GPU among ``jobs_per_gpu`` runs."""

    max_parallel: int | None = None  # jobs at once; null: 2 (CPU), jobs_per_gpu x gpus (cuda); 0: one per core
    threads_per_job: int | None = None  # torch threads per job; null: 1 (CPU), cores // jobs at once (cuda)
    gpus: int = 0  # cuda profiles: the first `gpus` visible GPUs, one Hydra multirun each; 0: every visible one
    jobs_per_gpu: int = 3  # cuda profiles: runs sharing one GPU at once (the benchmark's runs are small)


@dataclass(frozen=True)
class SlurmParams:
    """submitit_slurm's settings for the sweep's job arrays (hydra.launcher.<key>). Unset (null)
    resources follow the profile's device (embreg.sweep.resources.slurm_resources): a CPU
    profile asks for 0 GPUs, 1 CPU and 4 GB as it always has; a cuda one for one GPU per task
    and ``cpus_per_gpu`` CPUs and ``mem_gb_per_gpu`` GB with each GPU."""

    partition: str | None = "debug"
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1  # > 1: one DDP process per task (e.g. one per GPU)
    gpus_per_node: int | None = None  # null: 0 (CPU profile), tasks_per_node (cuda: one GPU per rank)
    cpus_per_task: int | None = None  # null: 1 (CPU), cpus_per_gpu x the task's GPUs (cuda); also torch's threads
    mem_gb: int | None = None  # per node; null: 4 (CPU), mem_gb_per_gpu x gpus_per_node (cuda)
    # a cuda profile's share of a GPU node per GPU: 8 CPUs and 32 GB fit the fair share of common
    # GPU nodes (e.g. 8 GPUs with 64-128 cores and 512 GB-1 TB), so a job never holds back the
    # node's other GPUs, and give the data loading and evaluation of one ResNet run room enough
    cpus_per_gpu: int = 8
    mem_gb_per_gpu: int = 32
    timeout_min: int = 60
    max_num_timeout: int = 3  # requeues after a time limit before a run counts as timed out
    constraint: str | None = None
    array_parallelism: int = 16  # array tasks running at once
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # extra sbatch flags
    # true: the sweep stage returns once its jobs are queued (exit status 75) instead of waiting
    # for them; a later `dvc repro` collects them. Not an sbatch setting (embreg.sweep.detach)
    detach: bool = False


@dataclass(frozen=True)
class PipelineSection:
    """One pipeline's section of params.yaml (``default``, ``robustness``, ...): its profile and
    the knobs a user turns, each the profile's own value when null
    (embreg.params_checks.KNOBS: the run config key each sets), plus extra Hydra overrides."""

    profile: str = "default"
    seeds: list[int] | None = None
    sweep_seeds: list[int] | None = None
    ablations: list[str] | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    device: str | None = None
    precision: str | None = None
    overrides: list[str] = field(default_factory=list)

    def hydra_overrides(self) -> list[str]:
        """The knobs that are set, as Hydra overrides, then the extra overrides."""
        from embreg.params_checks import KNOBS

        knobs = [f"{key}={_hydra_value(getattr(self, knob))}" for knob, key in KNOBS.items()
                 if getattr(self, knob) is not None]
        return knobs + list(self.overrides)


def _hydra_value(value: Any) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)


@dataclass(frozen=True)
class PipelineParams:
    """What a stage runs: its pipeline's profile and overrides (the section's knobs as Hydra
    overrides, then its own), the data and the launcher settings."""

    profile: str = "default"
    overrides: list[str] = field(default_factory=list)  # Hydra overrides for every run
    dataset: str | None = None  # the pipelines' dataset, as params.yaml declares it for DVC
    data_dir: str = "data"
    mirrors: dict[str, str | None] = field(default_factory=dict)  # dataset -> local copy of its raw files
    launcher: str = "local"
    local: LocalParams = field(default_factory=LocalParams)
    slurm: SlurmParams = field(default_factory=SlurmParams)
    pipeline: str | None = None  # the section these came from; None: the profile's own values
    pipelines: dict[str, PipelineSection] = field(default_factory=dict)  # every section of the file

    def mirror(self, dataset: str) -> str | None:
        return self.mirrors.get(dataset)

    def for_pipeline(self, name: str) -> PipelineParams:
        """Pipeline ``name``'s section (``--pipeline NAME``: the stages of dvc.yaml)."""
        if name not in self.pipelines:
            raise ValueError(f"params.yaml has no pipeline section {name!r}; sections: "
                             f"{', '.join(self.pipelines) or 'none'} (add one: {name}: {{profile: <name>}})")
        sec = self.pipelines[name]
        return dataclasses.replace(self, profile=sec.profile, overrides=sec.hydra_overrides(), pipeline=name)

    def for_profile(self, profile: str) -> PipelineParams:
        """Profile ``profile`` with the knobs of the section that runs it (the one named after it
        first), else with its own values (a profile no pipeline runs, e.g. smoke)."""
        check_option("profile", profile)
        runs = [n for n, s in self.pipelines.items() if s.profile == profile]
        if runs:
            return self.for_pipeline(profile if profile in runs else runs[0])
        return dataclasses.replace(self, profile=profile, overrides=[], pipeline=None)


def _section(cls: type, *layers: dict[str, Any] | None) -> Any:
    """``cls`` from its defaults updated by each layer in turn; an unknown key fails in one line."""
    names = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key not in names:
                raise ValueError(f"unknown {cls.__name__} key {key!r}; valid: {', '.join(sorted(names))}")
            merged[key] = value
    return cls(**merged)


def read_params_file(path: str | Path, sections: tuple[str, ...] | None = None,
                     pipelines: bool = True) -> dict[str, Any]:
    """A params file's mapping, checked first (embreg.params_checks.params_problems): unknown keys,
    bad values and malformed overrides are each one line of the ConfigError raised."""
    from embreg.checks import ConfigError
    from embreg.params_checks import PARAMS_KEYS, params_problems

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    found = params_problems(raw, str(path), sections or PARAMS_KEYS, pipelines, group_options)
    if found:
        raise ConfigError("\n".join(found))
    return raw


def load_params(path: str | Path = "params.yaml", site: str | Path | None = None,
                pipeline: str = DEFAULT_PIPELINE) -> PipelineParams:
    """params.yaml for ``pipeline`` (its section, else the profile of that name with its own
    values), with the launcher sections of ``site`` (default: params.local.yaml beside it, when
    present) merged over them: a site's cluster settings need not be committed."""
    from embreg.params_checks import is_pipeline

    path = Path(path)
    raw = read_params_file(path)
    site_path = Path(site) if site is not None else path.with_name(SITE_FILE)
    local = read_params_file(site_path, ("launcher", "local", "slurm"), False) if site_path.is_file() else {}
    data = raw.get("data") or {}
    params = PipelineParams(
        dataset=raw.get("dataset"),
        data_dir=data.get("dir", "data"),
        mirrors=dict(data.get("mirrors") or {}),
        launcher=local.get("launcher", raw.get("launcher", "local")),
        local=_section(LocalParams, raw.get("local"), local.get("local")),
        slurm=_section(SlurmParams, raw.get("slurm"), local.get("slurm")),
        pipelines={k: _section(PipelineSection, v) for k, v in raw.items() if is_pipeline(v)},
    )
    return params.for_pipeline(pipeline) if pipeline in params.pipelines else params.for_profile(pipeline)


def profile_knobs(profile: str) -> dict[str, Any]:
    """The knobs' values in ``profile``'s own config (what a null knob in params.yaml means)."""
    from omegaconf import OmegaConf

    from embreg.params_checks import KNOBS

    node = OmegaConf.structured(compose_run(profile))
    return {knob: OmegaConf.to_container(v) if OmegaConf.is_config(v := OmegaConf.select(node, key)) else v
            for knob, key in KNOBS.items()}


def conf_dir() -> Path:
    """The Hydra tree: $EMBREG_CONF (the stage scripts point it at their own checkout's conf/),
    else the conf/ beside this package."""
    return Path(os.environ.get("EMBREG_CONF") or REPO_ROOT / "conf")


def group_options(group: str) -> list[str]:
    """The config files of a conf/ group, e.g. group_options("profile") -> [default, smoke]."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def check_option(group: str, name: str) -> str:
    from embreg.registry import check_choice

    return check_choice(group, name, group_options(group))


def _times(value: Any, factor: Any) -> float:
    """``${times:${optim.lr},3}``: a sweep value as a multiple of the profile's own."""
    return float(value) * float(factor)


def _equal_images(steps_per_epoch: Any, batch: Any, new_batch: Any) -> int | None:
    """``${equal_images:${pretrain.steps_per_epoch},${optim.batch_size},256}``: the steps per epoch
    that keep the images seen (steps x batch) at the profile's when the batch becomes ``new_batch``
    (rounded, at least 1). An epoch-based profile (null) already sees every image once per epoch."""
    if steps_per_epoch is None:
        return None
    return max(1, round(int(steps_per_epoch) * int(batch) / int(new_batch)))


def register_resolvers() -> None:
    """The interpolations the ablation files may use to scale a sweep with the profile."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("times", _times, replace=True)
    OmegaConf.register_new_resolver("equal_images", _equal_images, replace=True)


def compose_run(profile: str, overrides: list[str] | None = None):
    """Compose conf/ for ``profile`` with extra overrides; returns a typed RunConfig.

    Group choices in the overrides (``objective=...``, ``ablation=...``) are checked first so
    an unknown name gives one line listing the valid ones."""
    from hydra import compose, initialize_config_dir

    from embreg.config import register_configs, to_run_config

    check_option("profile", profile)
    for ov in overrides or []:
        key, _, value = ov.partition("=")
        if (conf_dir() / key).is_dir() and value not in ("null", ""):
            check_option(key, value)
    register_configs()
    register_resolvers()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose("config", overrides=[f"profile={profile}", *(overrides or [])])
        return to_run_config(cfg)
    except Exception as exc:  # Hydra's report spans lines and names no fix: one line instead
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        from embreg.checks import ConfigError
        from embreg.overrides import explain_hydra

        if isinstance(exc, HydraException | OmegaConfBaseException):
            raise ConfigError(explain_hydra(exc, list(overrides or []))) from None
        raise
