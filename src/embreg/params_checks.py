"""params.yaml (and params.local.yaml): its sections and keys, and the rule each value follows;
every problem one line (``params_problems``). Torch-free.

Besides the fixed sections (``dataset``, ``data``, the launcher's), every mapping with a
``profile`` key is a pipeline's section (``default``, ``robustness``, ...): the knobs of the
stages that run it, each turned into a Hydra override (``KNOBS``) or left to the profile (null).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from embreg.checks import DEVICE, _bad, _Collector
from embreg.config import PRECISIONS
from embreg.overrides import override_problems

# params.yaml: its fixed sections and keys, and the rule each value follows
PARAMS_KEYS = ("dataset", "data", "launcher", "local", "slurm")
DATA_KEYS = ("dir", "mirrors", "mirror")
LAUNCHERS = ("local", "slurm")  # also embreg.params.LAUNCHERS (params imports this module lazily)
LOCAL_KEYS = {"max_parallel": 0, "threads_per_job": 1, "gpus": 0, "jobs_per_gpu": 1}  # key -> least allowed
SLURM_INTS = {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 1,
              "max_num_timeout": 0, "array_parallelism": 1, "cpus_per_gpu": 1, "mem_gb_per_gpu": 1}
NOT_NULL = ("gpus", "jobs_per_gpu", "cpus_per_gpu", "mem_gb_per_gpu")  # launcher keys without an unset state
SLURM_OTHER = ("partition", "account", "qos", "constraint", "mem_gb", "additional_parameters", "detach")
# a pipeline section's knobs -> the run config key each sets (a Hydra override); null: the profile's own
KNOBS: dict[str, str] = {
    "seeds": "profile.seeds", "sweep_seeds": "profile.sweep_seeds", "ablations": "profile.ablations",
    "epochs": "pretrain.epochs", "steps_per_epoch": "pretrain.steps_per_epoch", "batch_size": "optim.batch_size",
    "device": "profile.device", "precision": "pretrain.precision",
}
PIPELINE_KEYS = ("profile", *KNOBS, "overrides")
Options = Callable[[str], list[str]]  # a conf/ group -> its option names
PIPELINE_HINT = "or a pipeline's section (a mapping with profile: <name>)"
LEAST = {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2}  # integer knobs -> least allowed
# what prepare reads besides params.yaml's dataset: the dataset's label subsets come from
# conf/dataset/<name>.yaml alone, so a pipeline's override of them would not reach the data
PREPARED = ("dataset", "dataset.subset_fractions", "dataset.subset_seed")


def _unknown(where: str, keys: Any, valid: tuple[str, ...] | list[str], hint: str = "") -> list[str]:
    import difflib

    out = []
    for k in keys:
        if k not in valid:
            near = difflib.get_close_matches(str(k), valid, n=1)
            out.append(f"{where}: unknown key {k!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                       + f"; valid: {', '.join(valid)}" + (f", {hint}" if hint else ""))
    return out


def is_pipeline(value: Any) -> bool:
    """Whether a top-level entry of params.yaml is a pipeline's section."""
    return isinstance(value, dict) and "profile" in value


def params_problems(raw: Any, where: str = "params.yaml", sections: tuple[str, ...] = PARAMS_KEYS,
                    pipelines: bool = True, options: Options | None = None) -> list[str]:
    """Every problem of a params.yaml (or of params.local.yaml: its launcher ``sections``, no
    ``pipelines``). ``options``: a conf/ group's names (embreg.params.group_options), to check
    the pipelines' profiles and ablations by name."""
    if not isinstance(raw, dict):
        return [f"{where}: must be a mapping of keys ({', '.join(sections)}), got {type(raw).__name__}"]
    found = [k for k, v in raw.items() if pipelines and k not in sections and is_pipeline(v)]
    moved = [k for k in raw if pipelines and k in PIPELINE_KEYS and k not in sections]
    out = [f"{where}: {k!r} is a pipeline's setting: set it in a pipeline's section, e.g. default.{k}" for k in moved]
    out += _unknown(where, [k for k in raw if k not in found and k not in moved], [*sections, *found],
                    PIPELINE_HINT if pipelines else "")
    c = _Collector()
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        c.out.append(_bad("data", data, f"must be a mapping with {', '.join(DATA_KEYS)}"))
    else:
        out += _unknown(f"{where}: data", data, DATA_KEYS)
    if "launcher" in raw:
        c.choice("launcher", raw["launcher"], LAUNCHERS)
    out += _launcher_problems(raw, where, c)
    for name in found:
        out += [f"{where}: {p}" for p in pipeline_problems(name, raw[name], options)]
    return out + [f"{where}: {p}" for p in c.out]


def _launcher_problems(raw: dict[str, Any], where: str, c: _Collector) -> list[str]:
    out: list[str] = []
    for section, ints, others in (("local", LOCAL_KEYS, ()), ("slurm", SLURM_INTS, SLURM_OTHER)):
        sec = raw.get(section) or {}
        if not isinstance(sec, dict):
            c.out.append(_bad(section, sec, "must be a mapping"))
            continue
        out += _unknown(f"{where}: {section}", sec, (*ints, *others))
        for key, least in ints.items():
            if key in sec and (sec[key] is not None or key in NOT_NULL):
                c.number(f"{section}.{key}", sec[key], least, integer=True)
        if section == "slurm" and sec.get("mem_gb") is not None:
            c.number("slurm.mem_gb", sec["mem_gb"], 0, lo_open=True)
        if section == "slurm" and not isinstance(sec.get("detach", False), bool):  # "false" would read as true
            c.out.append(_bad("slurm.detach", sec["detach"], "must be true or false"))
    return out


def pipeline_problems(name: str, sec: dict[str, Any], options: Options | None = None) -> list[str]:
    """Every problem of pipeline section ``name``: its keys, each knob's value (null: the
    profile's own), its profile and ablations by name (given ``options``), and overrides that
    parse and set no knob."""
    out = _unknown(name, sec, PIPELINE_KEYS)
    c = _Collector()
    profiles = options("profile") if options else [sec["profile"]]
    if sec["profile"] not in profiles:
        c.out.append(f"{name}.profile: unknown profile {sec['profile']!r}; valid: {', '.join(profiles)}")
    for key in ("seeds", "sweep_seeds"):
        if sec.get(key) is not None and not _int_list(sec[key]):
            c.out.append(_bad(f"{name}.{key}", sec[key], "must be a list of distinct integers >= 0, or null"))
    abl = sec.get("ablations")
    if abl is not None:
        valid = options("ablation") if options else list(map(str, abl or []))
        if not isinstance(abl, list) or not abl or len(set(map(str, abl))) != len(abl):
            c.out.append(_bad(f"{name}.ablations", abl, f"must be a list of distinct names ({', '.join(valid)}), or null"))
        else:
            c.out += [f"{name}.ablations: unknown ablation {a!r}; valid: {', '.join(valid)}" for a in abl if a not in valid]
    for key, least in LEAST.items():
        if sec.get(key) is not None:
            c.number(f"{name}.{key}", sec[key], least, integer=True)
    if sec.get("device") is not None and not DEVICE.match(str(sec["device"])):
        c.out.append(_bad(f"{name}.device", sec["device"], "must be cpu, cuda, cuda:<index> or mps, or null"))
    if sec.get("precision") is not None:
        c.choice(f"{name}.precision", sec["precision"], PRECISIONS)
    return out + c.out + _override_problems(name, sec)


def _int_list(value: Any) -> bool:
    return (isinstance(value, list) and bool(value) and len(set(value)) == len(value)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))


def _override_problems(name: str, sec: dict[str, Any]) -> list[str]:
    """A section's extra overrides: key=value strings that Hydra parses, setting neither the
    profile (its own key), nor what prepare reads (``PREPARED``), nor a key a knob of the
    section sets."""
    ov = sec.get("overrides") or []
    if not isinstance(ov, list) or not all(isinstance(o, str) for o in ov):
        return [_bad(f"{name}.overrides", ov, "must be a list of key=value strings")]
    malformed = override_problems(ov)
    out = [f"{name}.overrides: {p}" for p in malformed]
    owners = {target: knob for knob, target in KNOBS.items() if sec.get(knob) is not None}
    for o in ov if not malformed else []:
        key = o.partition("=")[0].lstrip("+~")
        if key == "profile":
            out.append(f"{name}.overrides: {o!r} chooses the profile; set {name}.profile instead")
        elif key in PREPARED:
            out.append(f"{name}.overrides: {o!r} would not reach the prepared data; set `dataset` in params.yaml "
                       "or the subsets in conf/dataset/<name>.yaml")
        elif key in owners:
            out.append(f"{name}.overrides: {o!r} sets what {name}.{owners[key]} sets; change {name}.{owners[key]}")
    return out
