"""An ablation's schema (conf/ablation/): the arms it compares, their seeds, and its
coefficient-sensitivity sweeps; or one robustness study. Torch-free, a leaf of embreg.config."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from embreg.registry import check_choice

STUDIES = ("", "learning_rate", "batch_size")


@dataclass
class AblationConfig:
    """One ablation: the arms it compares, their seeds, and coefficient-sensitivity sweeps; or one
    robustness study (``study``: learning_rate | batch_size), whose analysis draws and tests curves."""

    # the run schema (embreg.config.RunConfig, set there) a swept key's type is read from
    run_schema: ClassVar[type | None] = None

    name: str = ""
    title: str = ""
    question: str = ""
    arms: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=lambda: ["pixels", "random_init", "supervised"])
    # each sweep: {arm, key: <dotted config key>, values: [...]}, optionally `paired: {<key>: [one
    # value per point]}` (e.g. steps at equal images); values may scale the profile's: ${times:..}
    sweeps: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    sweep_seeds: list[int] = field(default_factory=lambda: [0, 1])
    sweep_overrides: list[str] = field(default_factory=lambda: ["eval.semi_supervised=false"])  # no fine-tuning
    # [arm, reference] run-id pairs the analysis tests (a sweep point's id: <arm>@<key's last part>=<value>)
    comparisons: list[list[str]] = field(default_factory=list)
    study: str = ""  # "" (an ablation) | learning_rate | batch_size: embreg.analysis.studies
    # published claims the ablation answers, each {claim, pairs: [[arm, reference], ...] among the
    # comparisons, metrics: [keys]}: a verdict by a rule fixed before the run (embreg.analysis.claims)
    claims: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # composing an ablation (embreg.params.compose_run) builds this object: fail there
        self.validate()

    def run_ids(self) -> list[str]:
        """The ablation's arms, baselines and sweep points, by run id."""
        points = [f"{sw['arm']}@{str(sw['key']).split('.')[-1]}={_as_schema_type(sw['key'], v)}"
                  for sw in self.sweeps for v in sw.get("values", [])]
        return [*self.arms, *self.baselines, *points]

    def validate(self) -> None:
        check_choice(f"ablation {self.name} study", self.study, STUDIES)
        for sw in self.sweeps:
            for key, vals in (sw.get("paired") or {}).items():
                if len(vals) != len(sw.get("values", [])):
                    raise ValueError(f"ablation {self.name}: sweep of {sw.get('key')} pairs {key} with "
                                     f"{len(vals)} values for its {len(sw.get('values', []))} points")
        valid = self.run_ids()
        for pair in self.comparisons:
            if len(pair) != 2:
                raise ValueError(f"ablation {self.name}: each comparison is [arm, reference], got {list(pair)}")
            for run in pair:
                check_choice(f"ablation {self.name} comparison run", run, valid)
        tested = [list(p) for p in self.comparisons]
        for claim in self.claims:
            if set(claim) != {"claim", "pairs", "metrics"} or not claim["pairs"] or not claim["metrics"]:
                raise ValueError(f"ablation {self.name}: each claim is {{claim, pairs, metrics}}, got {dict(claim)}")
            for pair in claim["pairs"]:
                if list(pair) not in tested:
                    raise ValueError(f"ablation {self.name}: claim pair {list(pair)} is not among its comparisons")


def _as_schema_type(key: str, value: Any) -> Any:
    """A swept value as the typed run config holds it (``10`` for a float key is ``10.0``), so
    an id built from the ablation file matches embreg.rundir.run_id's."""
    if _schema_type(key) is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _schema_type(key: str) -> Any:
    """The declared type of a dotted key of the run schema, through dataclass fields and dict
    values (``objective.terms.svmax`` -> float); None when the key is not in the schema."""
    tp: Any = AblationConfig.run_schema
    for part in str(key).split("."):
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(part)
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
        if tp is None:
            return None
    return tp
