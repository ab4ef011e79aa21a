"""params.yaml (and params.local.yaml): its sections and keys, and the rule each value follows;
every problem one line (``params_problems``). Torch-free."""

from __future__ import annotations

from typing import Any

from embreg.checks import _bad, _Collector
from embreg.overrides import override_problems

# params.yaml: its sections and keys, and the rule each value follows
PARAMS_KEYS = ("profile", "dataset", "overrides", "data", "launcher", "local", "slurm")
DATA_KEYS = ("dir", "mirrors", "mirror")
LAUNCHERS = ("local", "slurm")  # also embreg.params.LAUNCHERS (params imports this module lazily)
LOCAL_KEYS = {"max_parallel": 0, "threads_per_job": 1, "gpus": 0, "jobs_per_gpu": 1}  # key -> least allowed
SLURM_INTS = {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 1,
              "max_num_timeout": 0, "array_parallelism": 1, "cpus_per_gpu": 1, "mem_gb_per_gpu": 1}
NOT_NULL = ("gpus", "jobs_per_gpu", "cpus_per_gpu", "mem_gb_per_gpu")  # launcher keys without an unset state
SLURM_OTHER = ("partition", "account", "qos", "constraint", "mem_gb", "additional_parameters", "detach")


def _unknown(where: str, keys: Any, valid: tuple[str, ...] | list[str]) -> list[str]:
    import difflib

    out = []
    for k in keys:
        if k not in valid:
            near = difflib.get_close_matches(str(k), valid, n=1)
            out.append(f"{where}: unknown key {k!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                       + f"; valid: {', '.join(valid)}")
    return out


def params_problems(raw: Any, where: str = "params.yaml", sections: tuple[str, ...] = PARAMS_KEYS) -> list[str]:
    """Every problem of a params.yaml (or params.local.yaml, with its launcher ``sections``)."""
    if not isinstance(raw, dict):
        return [f"{where}: must be a mapping of keys ({', '.join(sections)}), got {type(raw).__name__}"]
    out = _unknown(where, raw, sections)
    c = _Collector()
    if "profile" in raw and not isinstance(raw["profile"], str):
        c.out.append(_bad("profile", raw["profile"], "must be the name of a file in conf/profile/"))
    ov = raw.get("overrides") or []
    if not isinstance(ov, list) or not all(isinstance(o, str) for o in ov):
        c.out.append(_bad("overrides", ov, "must be a list of key=value strings"))
    else:
        out += [f"{where}: overrides: {p}" for p in override_problems(ov)]
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        c.out.append(_bad("data", data, f"must be a mapping with {', '.join(DATA_KEYS)}"))
    else:
        out += _unknown(f"{where}: data", data, DATA_KEYS)
    if "launcher" in raw:
        c.choice("launcher", raw["launcher"], LAUNCHERS)
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
    return out + [f"{where}: {p}" for p in c.out]
