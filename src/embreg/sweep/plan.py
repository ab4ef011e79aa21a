"""The sweep plan: every ablation's arms, baselines and coefficient sweeps as runs (arm x seed
[x swept value]), deduplicated; their states from the run directories; the manifest.

A run shared by several ablations (same arm, same swept values, same seed) appears once, and a
run whose directory already holds a finished result with the current fingerprint is not
launched again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embreg.config import AblationConfig, RunConfig
from embreg.io import write_json
from embreg.params import PipelineParams, compose_run, group_options
from embreg.registry import check_choice
from embreg.rundir import Observed, State, observe, run_dir, run_id
from embreg.sweep.resources import device_type, launcher_problems


@dataclass(frozen=True)
class Job:
    """One run to train: an arm (chosen with ``objective=<arm>``), a seed, and for a
    sensitivity point the swept key and value."""

    arm: str
    seed: int
    sweep_key: str | None = None
    sweep_value: Any = None
    extra: tuple[str, ...] = ()  # the ablation's sweep_overrides, for sweep points

    def overrides(self) -> list[str]:
        ov = [f"objective={self.arm}", f"seed={self.seed}", "runtime.replace=true", *self.extra]
        if self.sweep_key:
            ov += [f"{self.sweep_key}={self.sweep_value}", f"tag_keys=[{self.sweep_key}]"]
        return ov


@dataclass
class Plan:
    profile: str
    ablations: dict[str, AblationConfig]
    jobs: list[Job] = field(default_factory=list)
    configs: dict[Job, RunConfig] = field(default_factory=dict)
    params: PipelineParams | None = None  # what made it: its launcher is checked with the runs

    def run_ids(self) -> dict[Job, str]:
        return {j: run_id(c) for j, c in self.configs.items()}


def load_ablations(params: PipelineParams, names: list[str] | None = None) -> dict[str, AblationConfig]:
    """The named ablations, else the profile's (``profile.ablations``), composed for the profile."""
    if not names:
        names = compose_run(params.profile, list(params.overrides)).profile.ablations
        for name in names:
            check_choice("ablation", name, group_options("ablation"))
    out = {}
    for name in names:
        cfg = compose_run(params.profile, [*params.overrides, f"ablation={name}"])
        assert cfg.ablation is not None
        out[name] = cfg.ablation
    return out


def ablation_jobs(abl: AblationConfig) -> list[Job]:
    """One ablation's runs: its arms and baselines x seeds, then its sweep points x sweep seeds."""
    jobs = [Job(arm, s) for arm in [*abl.arms, *abl.baselines] for s in abl.seeds]
    extra = tuple(abl.sweep_overrides)
    for sw in abl.sweeps:
        paired = sw.get("paired") or {}
        for i, v in enumerate(sw["values"]):
            along = tuple(f"{k}={'null' if vals[i] is None else vals[i]}" for k, vals in paired.items())
            jobs += [Job(sw["arm"], s, sw["key"], v, extra + along) for s in abl.sweep_seeds]
    return list(dict.fromkeys(jobs))


def make_plan(params: PipelineParams, ablations: list[str] | None = None) -> Plan:
    """All (arm, seed[, swept value]) runs of the chosen ablations, deduplicated."""
    abls = load_ablations(params, ablations)
    # keep order, drop duplicates: a run shared by two ablations is trained once
    jobs = list(dict.fromkeys(job for abl in abls.values() for job in ablation_jobs(abl)))
    plan = Plan(params.profile, abls, jobs, params=params)
    base = [*params.overrides, f"paths.data={params.data_dir}"]
    for job in jobs:
        plan.configs[job] = compose_run(params.profile, [*base, *job.overrides()])
    return plan


def plan_device(plan: Plan, jobs: list[Job] | None = None) -> str:
    """The device type the plan's runs (or ``jobs``) train on: cuda when any does (they need GPUs)."""
    types = {device_type(plan.configs[job].profile.device) for job in (plan.jobs if jobs is None else jobs)}
    return "cuda" if "cuda" in types else "cpu"


def validate_plan(plan: Plan, params: PipelineParams | None = None) -> None:
    """Every run of the plan, and the launcher settings (``params``, default: those that made
    the plan) for the runs it will train, checked before any is launched (or any result
    deleted): one ConfigError, one line per launcher setting that cannot run them
    (embreg.sweep.resources) and per bad run, with every problem it has. The data-aware rule (a
    batch that fits the training split) reads the prepared split once per dataset."""
    from embreg.checks import ConfigError, data_problems, problems

    params = params or plan.params
    launcher = []
    if params is not None:
        # the runs the launcher gets: the pending ones (a finished cuda sweep re-run on a machine
        # without a GPU launches nothing), every one when the stage retrains all (EMBREG_RETRAIN)
        todo = plan.jobs if os.environ.get("EMBREG_RETRAIN") == "1" else pending(plan)
        launcher = launcher_problems(params, plan_device(plan, todo)) if todo else []
    bad = []
    for cfg in plan.configs.values():
        found = problems(cfg) or data_problems(cfg)
        if found:
            bad.append(f"run {run_id(cfg)} seed{cfg.seed}: " + "; ".join(found))
    if bad:
        launcher.append(f"{len(bad)} of {len(plan.jobs)} runs have an invalid config; nothing was launched:")
    if launcher:
        raise ConfigError("\n".join(launcher + bad))


def unreadable(plan: Plan) -> list[str]:
    """One line per status file that cannot be read (its run counts as needing a rerun)."""
    return [f"warning: {seen.status['error']}; the run is retrained"
            for seen in observe_all(plan).values() if seen.state == State.UNREADABLE]


def observe_all(plan: Plan) -> dict[Job, Observed]:
    """Each job's run as its directory shows it (status read once, judged by embreg.rundir)."""
    return {job: observe(cfg) for job, cfg in plan.configs.items()}


def states(plan: Plan) -> dict[Job, State]:
    """Each job's run state; a result from other config or code is 'stale'."""
    return {job: seen.state for job, seen in observe_all(plan).items()}


def pending(plan: Plan) -> list[Job]:
    """Jobs without a finished result for the current config and code."""
    return [job for job, state in states(plan).items() if state != State.DONE]


def failed_runs(plan: Plan) -> list[dict[str, str]]:
    """One row per run without a finished result: state, run, seed, error and where to look
    (the job's log when a scheduler ran it, else the run's error.txt)."""
    rows = []
    for job, seen in observe_all(plan).items():
        if seen.state == State.DONE:
            continue
        rd = seen.path.parent if seen.path else run_dir(plan.configs[job])  # the attempt's directory
        error = str(seen.status.get("error") or "").splitlines()
        log = seen.status.get("log") or (str(rd / "error.txt") if (rd / "error.txt").is_file() else "")
        rows.append({"state": seen.state.value, "run": run_id(plan.configs[job]), "seed": job.seed,
                     "error": (error[0][:70] if error else ""), "log": log})
    return rows


def write_manifest(plan: Plan, results_dir: Path) -> dict[str, Any]:
    """Which runs each ablation expects, and their final states (read by the analysis). The JSON's
    keys are sorted: ``order`` keeps the profile's order of the ablations (its reports' order)."""
    ids, st = plan.run_ids(), states(plan)
    manifest: dict[str, Any] = {"profile": plan.profile, "order": list(plan.ablations), "ablations": {}, "runs": {}}
    for name, abl in plan.ablations.items():
        manifest["ablations"][name] = {
            "title": abl.title, "question": abl.question, "arms": abl.arms,
            "baselines": abl.baselines, "seeds": abl.seeds, "sweep_seeds": abl.sweep_seeds,
            "comparisons": [list(pair) for pair in abl.comparisons],
            **({"claims": [dict(c) for c in abl.claims]} if abl.claims else {}),
            **({"study": abl.study} if abl.study else {}),  # a robustness study (embreg.analysis.studies)
            "sweeps": [{"arm": s["arm"], "key": s["key"], "values": list(s["values"]),
                        "runs": [f"{s['arm']}@{s['key'].split('.')[-1]}={v}" for v in s["values"]]}
                       for s in abl.sweeps],
        }
    for job, rid in ids.items():
        manifest["runs"].setdefault(rid, {})[str(job.seed)] = st[job].value
    write_json(results_dir / "runs" / "manifest.json", manifest)
    return manifest
