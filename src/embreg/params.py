"""params.yaml: the pipeline's knobs, read in one place for every stage."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PipelineParams:
    profile: str = "default"
    overrides: list[str] = field(default_factory=list)  # Hydra overrides for every run
    data_dir: str = "data"
    mirror: str | None = None
    launcher: str = "local"
    local: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)


def load_params(path: str | Path = "params.yaml") -> PipelineParams:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    data = raw.get("data", {}) or {}
    return PipelineParams(
        profile=raw.get("profile", "default"),
        overrides=list(raw.get("overrides") or []),
        data_dir=data.get("dir", "data"),
        mirror=data.get("mirror"),
        launcher=raw.get("launcher", "local"),
        local=raw.get("local") or {},
        slurm=raw.get("slurm") or {},
    )


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


def compose_run(profile: str, overrides: list[str] | None = None):
    """Compose conf/ for ``profile`` with extra overrides; returns a typed RunConfig.

    Group choices in the overrides (``objective=...``, ``ablation=...``) are checked first so
    an unknown name gives one line listing the valid ones."""
    from hydra import compose, initialize_config_dir

    from embreg.config import register_configs
    from embreg.train import to_run_config

    check_option("profile", profile)
    for ov in overrides or []:
        key, _, value = ov.partition("=")
        if (conf_dir() / key).is_dir() and value not in ("null", ""):
            check_option(key, value)
    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"profile={profile}", *(overrides or [])])
    return to_run_config(cfg)
