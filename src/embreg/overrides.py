"""Command-line and params.yaml overrides: parsing them, and Hydra's multi-line composition
errors as one line naming the override at fault and what is valid there. Torch-free."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from embreg.config import RunConfig


def explain_hydra(exc: Exception, overrides: list[str]) -> str:
    """Hydra's multi-line composition error as one line naming the override at fault."""
    if malformed := override_problems(overrides):
        return malformed[0]
    if m := re.search(r"Could not find '([^']+)/([^'/]+)'", str(exc)):  # an unknown group choice
        return f"unknown {m.group(1)} {m.group(2)!r}; valid: " + ", ".join(re.findall(r"^\t(\S+)$", str(exc), re.M))
    cause = exc.__cause__ or exc
    text = str(cause).strip()
    first = text.splitlines()[0] if text else type(cause).__name__
    m = re.search(r"full_key: (\S+)", text)
    key = m.group(1) if m else ""
    names = [(o, o.lstrip("+~").partition("=")[0]) for o in overrides]
    ov = next((o for o, n in names if key and (n == key or n.startswith(key + "."))), key)
    if " not in " in first and key:
        parent, _, leaf = key.rpartition(".")
        return f"override {ov!r}: the config has no key {key!r}; {parent or 'the top level'} has: {', '.join(_keys(parent))}"
    return f"override {ov!r}: {first}"


def _keys(dotted: str) -> list[str]:
    """The keys under ``dotted`` in the run config's schema."""
    node: Any = asdict(RunConfig())
    for part in filter(None, dotted.split(".")):
        node = node.get(part) if isinstance(node, dict) else None
    return sorted(node) if isinstance(node, dict) else []


def override_problems(overrides: list[str]) -> list[str]:
    """One line per override that does not parse as Hydra's key=value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for ov in overrides:
        try:
            parser.parse_override(ov)
        except HydraException:
            out.append(f"malformed override {ov!r}; an override is key=value, e.g. optim.lr=0.01")
    return out


# Hydra's command-line flags: those followed by a value, and those that only print (no run)
VALUE_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p",
               "--cfg", "-c", "--experimental-rerun")
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--version", "--cfg", "-c", "--shell-completion", "-sc")
GROUPS = ("dataset", "backbone", "optim", "eval", "objective", "profile", "ablation")  # conf/'s config groups


def split_args(args: list[str]) -> tuple[list[str], bool, bool]:
    """A command line's (overrides, multirun, informational): its key=value overrides, whether
    it asks for a multirun (-m / --multirun), and whether it only prints (--help, --cfg, ...)."""
    overrides, multirun, info, skip = [], False, False, False
    for a in args:
        if skip:
            skip = False
            continue
        flag = a.partition("=")[0]
        if flag in ("-m", "--multirun"):
            multirun = True
        elif flag in INFO_FLAGS:
            info = True
            skip = flag in VALUE_FLAGS and "=" not in a
        elif flag in VALUE_FLAGS:
            skip = "=" not in a
        elif not a.startswith("-"):
            overrides.append(a)
    return overrides, multirun, info


def expand(overrides: list[str], limit: int = 64) -> list[list[str]]:
    """The single-run override lists a multirun's sweeps (``key=a,b``, ``range(...)``) stand for:
    every combination up to ``limit``, else each value of each key with the others at their
    first (every value still composed once)."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    choices = []
    for ov in overrides:
        parsed = parser.parse_override(ov)
        if parsed.is_sweep_override():
            prefix = ov.split("=", 1)[0]
            choices.append([f"{prefix}={v}" for v in parsed.sweep_string_iterator()])
        else:
            choices.append([ov])
    total = 1
    for c in choices:
        total *= len(c)
    if total <= limit:
        return [list(combo) for combo in itertools.product(*choices)]
    firsts = [c[0] for c in choices]
    return [firsts[:i] + [v] + firsts[i + 1:] for i, c in enumerate(choices) for v in c]


def unknown_keys(cfg: RunConfig, overrides: list[str]) -> list[str]:
    """One line per override whose key the composed config does not hold (``+pretrain.foo=1``
    would otherwise be dropped without a word). Group choices and Hydra's own keys are not ours."""
    science = asdict(cfg)
    out = []
    for ov in overrides:
        key = ov.lstrip("+~").partition("=")[0]
        if key.startswith("hydra") or key in GROUPS or key.partition("@")[0] in GROUPS:
            continue
        node: Any = science
        for part in key.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is KeyError:
            parent = key.rpartition(".")[0]
            out.append(f"override {ov!r}: the config has no key {key!r}; "
                       f"{parent or 'the top level'} has: {', '.join(_keys(parent)) or 'no keys'}")
    return out
