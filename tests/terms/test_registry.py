"""The term registry (embreg.terms): every term declared once, validated parameters, a fixed
order, plug-in modules, and the config checks that read it."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest

from embreg import terms as T
from embreg.checks import term_problems
from embreg.config import OBJECTIVE_KINDS, ObjectiveConfig
from embreg.registry import UnknownNameError


def test_every_term_is_fully_declared():
    for name in T.names():
        t = T.get(name)
        assert t.name == name and t.doc and t.equation, name
        assert set(t.kinds) <= set(OBJECTIVE_KINDS), name
        for key, p in t.params.items():
            assert p.problem(p.default) is None, f"{name}.{key}: its default is not allowed"
        assert t.resolved(None) == {k: p.default for k, p in t.params.items()}


def test_unknown_term_lists_the_registered_ones():
    with pytest.raises(UnknownNameError) as err:
        T.get("nosuch")
    assert all(n in str(err.value) for n in T.names())


def test_builtin_terms_come_first_in_a_fixed_order():
    """Terms are summed in registration order; the built-in modules' come first, VICReg's in the
    order of its loss (the order of a float sum changes its last bits)."""
    names = T.names()
    assert names[:5] == ["invariance", "variance", "covariance", "contrastive", "svmax"]
    assert T.ordered({"svmax", "invariance", "covariance"}) == ["invariance", "covariance", "svmax"]
    # whichever term module is imported first
    code = "import embreg.terms.svmax, embreg.terms.barlow\nfrom embreg import terms\nprint(','.join(terms.names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.split(",") == names


@pytest.mark.parametrize(("param", "value", "why"), [
    (T.Param(1.0, lo=0, lo_open=True), 0.0, "must be a finite number > 0"),
    (T.Param(1.0, lo=0, lo_open=True), math.nan, "must be a finite number > 0"),
    (T.Param(1.0, lo=0, hi=2), 3, "must be a finite number >= 0 and <= 2"),
    (T.Param(4, lo=1), 2.5, "must be an integer >= 1"),
    (T.Param(True), 1, "must be true or false"),
    (T.Param("a", choices=("a", "b")), "c", "must be one of a, b"),
    (T.Param(1.0), "x", "must be a finite number"),
])
def test_parameter_checks(param, value, why):
    assert param.problem(value) == why
    assert param.problem(param.default) is None


def obj(**kwargs) -> ObjectiveConfig:
    return ObjectiveConfig(**{"terms": {"invariance": 1.0}, **kwargs})


@pytest.mark.parametrize(("config", "expected"), [
    (obj(terms={"invariance": 1.0, "nosuch": 1.0}), "objective.terms.nosuch=1.0: unknown loss term; valid: "),
    (obj(terms={"invariance": 1.0, "variance": -1.0}), "objective.terms.variance=-1.0: must be a finite number >= 0"),
    (obj(terms={"contrastive": 1.0}), "objective.terms.contrastive=1.0: term 'contrastive' fits objective kinds "
                                      "metric, not 'ssl'"),
    (obj(params={"variance": {"gama": 1}}), "objective.params.variance.gama=1: term 'variance' has no parameter "
                                            "'gama'; valid: gamma, eps, halve"),
    (obj(params={"svmax": {"form": "log"}}), "objective.params.svmax.form=log: must be one of score, neg_mean, exp"),
    (obj(params={"nosuch": {}}), "objective.params.nosuch={}: unknown loss term; valid: "),
    (obj(terms={"invariance": 0.0}), "objective.terms={'invariance': 0.0}: an ssl or metric arm trains at least one "
                                     "term (a coefficient > 0)"),
])
def test_term_problems_name_key_value_and_what_is_valid(config, expected):
    found = term_problems(config)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_references_train_no_term_and_pass():
    assert term_problems(ObjectiveConfig(kind="pixels", terms={})) == []
    assert term_problems(ObjectiveConfig(kind="supervised", terms={})) == []


def test_a_term_in_a_module_outside_the_package_is_registered(tmp_path):
    """$EMBREG_TERMS names modules to import: their terms join the registry after the package's,
    and the config checks, the objective and the catalog know them."""
    (tmp_path / "myterms.py").write_text(textwrap.dedent('''
        import torch
        from embreg.terms import Param, term

        @term("center", "pulls the batch mean to the origin", equation="||mean_i z_i||^2",
              params={"power": Param(2.0, "the norm's power", lo=1)}, regularizer=True)
        def center(views, power):
            return sum(z.mean(0).norm().pow(power) for z in views.embedded())
    '''))
    code = textwrap.dedent('''
        import torch
        from embreg import terms as T
        from embreg.checks import term_problems
        from embreg.config import ObjectiveConfig
        from embreg.objective import ssl_loss
        names = T.names()
        assert names[-1] == "center", names
        obj = ObjectiveConfig(terms={"invariance": 1.0, "center": 0.5}, params={"center": {"power": 1.0}})
        assert term_problems(obj) == []
        z1, z2 = torch.randn(8, 4) + 3, torch.randn(8, 4) + 3
        total, logged = ssl_loss(z1, z2, {}, {}, obj)
        inv = float(torch.nn.functional.mse_loss(z1, z2))
        expect = inv + 0.5 * float(z1.mean(0).norm() + z2.mean(0).norm())
        assert abs(float(total) - expect) < 1e-5 and "center" in logged, (float(total), expect)
        assert any(t["name"] == "center" and t["regularizer"] for t in T.catalog())
        print("ok")
    ''')
    env = {"EMBREG_TERMS": "myterms", "PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_a_plugin_named_after_the_first_load_is_still_imported(tmp_path, monkeypatch):
    """The registry is loaded by the first import that needs it; a later $EMBREG_TERMS (a test
    suite, a notebook) must still reach it, in the same process."""
    assert "late_center" not in T.names()  # loaded without it
    (tmp_path / "late_terms.py").write_text(textwrap.dedent('''
        from embreg.terms import term

        @term("late_center", "pulls the batch mean to the origin", equation="||mean_i z_i||")
        def late_center(views):
            return sum(z.mean(0).norm() for z in views.embedded())
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(T.PLUGINS_ENV, "late_terms")
    assert T.names()[-1] == "late_center"
    assert T.get("late_center").doc.startswith("pulls")
    assert T.names().count("late_center") == 1  # imported once, however often asked
    # (tests/conftest.py takes it out of the registry after the test)
