"""The loss terms, each declared once: name, function, parameters with defaults and checks, what
it needs and where it applies. Config validation (embreg.checks), the objective
(embreg.objective), the run fingerprint (embreg.fingerprint), the analysis and the docs' table of
terms all read this registry, so a new term is one module in this package (or any module named
in ``$EMBREG_TERMS``) plus one objective YAML in conf/objective/.

A term module registers its terms with ``@term(...)`` on a function ``fn(views, **params)``
returning a 0-d tensor; ``views`` is an ``embreg.objective.Views`` (the batch's embeddings, the
arm's space, labels and head outputs). Importing a module registers its terms; ``load()``
imports every module of this package and of ``$EMBREG_TERMS`` (comma-separated module names),
once. The package itself holds declarations only: how terms are combined into a loss lives in
embreg.objective.
"""

from __future__ import annotations

import importlib
import math
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embreg.registry import Registry

# imported first, in this order, so that their terms are summed in a fixed order whatever else
# is added (the order of a float sum changes its last bits); other modules follow alphabetically
BUILTIN = ("vicreg", "contrastive", "svmax")
PLUGINS_ENV = "EMBREG_TERMS"  # extra modules that register terms, e.g. "mylab.terms,tests.terms_example"


@dataclass(frozen=True)
class Param:
    """One parameter of a term: its default and the values it accepts (a numeric range, or a
    fixed set of choices); ``doc`` is shown in errors and the docs' table."""

    default: Any
    doc: str = ""
    lo: float | None = None  # numbers: the least allowed value (inclusive unless lo_open)
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[Any, ...] | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (one phrase, e.g. "must be a finite number > 0"), or None."""
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {', '.join(map(str, self.choices))}"
        if isinstance(self.default, bool):
            return None if isinstance(value, bool) else "must be true or false"
        if not isinstance(self.default, int | float):
            return None
        integer = isinstance(self.default, int)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (not integer or float(value).is_integer())
        if ok and self.lo is not None:
            ok = value > self.lo if self.lo_open else value >= self.lo
        if ok and self.hi is not None:
            ok = value <= self.hi
        if ok:
            return None
        rng = [f"{'>' if self.lo_open else '>='} {self.lo:g}"] if self.lo is not None else []
        rng += [f"<= {self.hi:g}"] if self.hi is not None else []
        return f"must be {'an integer' if integer else 'a finite number'}" + (" " + " and ".join(rng) if rng else "")


@dataclass(frozen=True)
class Term:
    """A loss term of the objective. ``coefficient * fn(views, **params)`` is added to an arm's
    loss for every term in its ``objective.terms`` with a coefficient > 0."""

    name: str
    fn: Callable[..., Any]
    doc: str  # one line: what it does, after which paper
    equation: str = ""  # the definition, as the docs print it
    params: dict[str, Param] = field(default_factory=dict)
    # keeps one embedding from collapsing (VICReg's variance and covariance, SVMax): with
    # ``objective.layers: all`` it also acts on every stage's pooled output; the regime table and
    # the collapse plots group arms by these
    regularizer: bool = False
    # computed without gradient, for the loss-term curves, by the arms that do not train with it
    # (every ``pretrain.monitor_every`` steps); off for terms too costly or too specific to log
    monitor: bool = False
    kinds: tuple[str, ...] = ("ssl",)  # the objective kinds (embreg.config.OBJECTIVE_KINDS) it fits
    # a module the term needs on top of the projector (SimSiam's predictor): ``head(embed_dim,
    # **params) -> nn.Module``, built for the arms that train the term, applied to each view
    head: Callable[..., Any] | None = None

    def resolved(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """The parameters with the defaults filled in (``given`` is assumed checked)."""
        return {k: (given or {}).get(k, p.default) for k, p in self.params.items()}

    def problems(self, given: dict[str, Any] | None, where: str) -> list[str]:
        """One line per unknown or invalid parameter in ``given`` (the config at ``where``)."""
        out = []
        for key, value in (given or {}).items():
            if key not in self.params:
                valid = ", ".join(self.params) or "none"
                out.append(f"{where}.{key}={value}: term {self.name!r} has no parameter {key!r}; valid: {valid}")
            elif why := self.params[key].problem(value):
                out.append(f"{where}.{key}={value}: {why}")
        return out


TERMS: Registry[Term] = Registry("loss term")
_imported: set[str] = set()  # the term modules imported so far
_local: list[str] = []  # this package's term modules, in ``_module_order``'s order (found once)


def term(name: str, doc: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated ``fn(views, **params)`` as the term ``name`` (see ``Term``)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        TERMS.register(name)(Term(name=name, fn=fn, doc=doc, **kwargs))
        return fn

    return deco


def load() -> Registry[Term]:
    """The registry with every term module imported: this package's and ``$EMBREG_TERMS``'s.
    ``$EMBREG_TERMS`` is read on every call: a module named after the first load (a test, a
    notebook that sets it late) is imported then."""
    for mod in _module_order():
        if mod not in _imported:
            importlib.import_module(mod)
            _imported.add(mod)
    return TERMS


def _module_order() -> list[str]:
    """``BUILTIN``, then this package's other modules alphabetically, then ``$EMBREG_TERMS``'s."""
    if not _local:
        found = sorted(m.name for m in pkgutil.iter_modules(__path__))
        _local.extend(f"{__name__}.{m}" for m in [*BUILTIN, *(m for m in found if m not in BUILTIN)])
    return _local + [n for n in (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(",")) if n]


def names() -> list[str]:
    """Every term, in the order terms are computed and summed in: by module (``_module_order``),
    then as each module declares them. Fixed whatever was imported first (the order of a float
    sum changes its last bits)."""
    load()
    rank = {m: i for i, m in enumerate(_module_order())}
    declared = TERMS.registered()
    return sorted(declared, key=lambda n: (rank.get(TERMS.get(n).fn.__module__, len(rank)), declared.index(n)))


def get(name: str) -> Term:
    """The term ``name``; an unknown name lists the registered ones."""
    return load().get(name)


def ordered(selected: Any) -> list[str]:
    """The ``selected`` term names in ``names()`` order (unknown names last, as given)."""
    order = {n: i for i, n in enumerate(names())}
    return sorted(selected, key=lambda n: order.get(n, len(order)))


def catalog() -> list[dict[str, Any]]:
    """Every term as plain data (the docs' table of terms, the analysis): name, doc, equation,
    parameters with defaults, regularizer, monitor, kinds, head."""
    return [{"name": t.name, "doc": t.doc, "equation": t.equation,
             "params": {k: p.default for k, p in t.params.items()}, "regularizer": t.regularizer,
             "monitor": t.monitor, "kinds": list(t.kinds), "head": t.head is not None}
            for t in (get(n) for n in names())]
