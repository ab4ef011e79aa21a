"""Run fingerprints (embreg.fingerprint): they change only when a run's computation can. The
science config and the code a run runs are hashed; comments, docstrings, formatting and the
terms' descriptions are not; a term's code reaches only the runs that train with it; the
references that train nothing never see the training code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from embreg import fingerprint as F
from embreg.params import compose_run

TERMS_DIR = F.PACKAGE_DIR / "terms"


def cfg(arm: str, *overrides: str):
    return compose_run("default", [f"objective={arm}", *overrides])


def test_parts_follow_the_kind_and_the_trained_terms():
    assert set(F.code_parts(cfg("pixels"))) == {"run", "data", "eval"}
    assert set(F.code_parts(cfg("random_init"))) == {"run", "data", "model", "eval"}
    assert set(F.code_parts(cfg("supervised"))) == set(F.CODE_PARTS)
    svmax = F.code_parts(cfg("svmax"))
    assert set(svmax) == set(F.CODE_PARTS) | {"term:invariance", "term:svmax"}  # not the logged-only ones
    assert set(F.code_parts(cfg("vicreg_nocov"))) == set(F.CODE_PARTS) | {"term:invariance", "term:variance"}
    assert set(F.code_parts(cfg("barlow"))) == set(F.CODE_PARTS) | {"term:barlow"}


def test_term_hashes_cover_their_module_and_what_it_imports_from_the_package():
    # SVMax's module imports its linear algebra (terms/spectral.py): both are hashed, not VICReg's
    svmax = F._hash_files([TERMS_DIR / "spectral.py", TERMS_DIR / "svmax.py"], F.PACKAGE_DIR)
    assert F.term_hash("svmax") == svmax
    assert F.term_hash("variance") == F.term_hash("covariance") == F._hash_files([TERMS_DIR / "vicreg.py"], F.PACKAGE_DIR)


def _variant(tmp_path: Path, source: Path, edit) -> Path:
    out = tmp_path / source.name
    out.write_text(edit(source.read_text()))
    return out


@pytest.mark.parametrize(("what", "edit", "same"), [
    ("a comment", lambda s: s.replace("\nimport torch\n", "\nimport torch  # the tensors\n", 1), True),
    ("a docstring", lambda s: s.replace('"""SVMax', '"""The SVMax', 1), True),
    ("blank lines and line breaks", lambda s: s.replace("\n\n\n", "\n\n\n\n").replace(", form: str)", ",\n        form: str)"), True),
    ("the term's description", lambda s: s.replace("pushed to its upper bound", "pushed up"), True),
    ("a parameter's description", lambda s: s.replace("(1 - normalized score)", "(one minus the score)"), True),
    ("a default", lambda s: s.replace('Param("score"', 'Param("exp"'), False),
    ("the computation", lambda s: s.replace("svmax_loss(torch.stack(zs), form).mean()",
                                            "svmax_loss(torch.stack(zs), form).sum()"), False),
])
def test_only_a_change_of_the_code_changes_its_hash(tmp_path, what, edit, same):
    source = TERMS_DIR / "svmax.py"
    changed = _variant(tmp_path, source, edit)
    assert changed.read_text() != source.read_text(), f"the edit of {what} did not apply"
    assert (F.source_hash(changed) == F.source_hash(source)) is same, what


def test_selection_keys_and_paths_change_no_fingerprint():
    base = F.run_fingerprint(cfg("svmax"))
    for ov in ("profile.seeds=[0,1,2,3]", "profile.ablations=[covariance]", "profile.sweep_seeds=[4]",
               "paths.results=/elsewhere", "runtime.threads=3", "runtime.replace=true", "tag_keys=[]"):
        assert F.run_fingerprint(cfg("svmax", ov)) == base, ov
    assert F.run_fingerprint(cfg("svmax", "seed=1")) != base
    assert F.run_fingerprint(cfg("svmax", "objective.terms.svmax=2.0")) != base
    # a logged-only term's coefficient at 0 changes nothing the network sees
    assert F.run_fingerprint(cfg("svmax", "+objective.terms.covariance=0.0")) == base


def test_stale_reasons_name_config_and_code_parts():
    now = F.fingerprint_parts(cfg("svmax"))
    assert F.stale_reasons(now, now) == []
    assert F.stale_reasons({**now, "config": "x"}, now) == ["config"]
    assert F.stale_reasons({**now, "eval": "x", "term:svmax": "y"}, now) == ["code: eval, term:svmax"]
    assert F.stale_reasons(None, now) == ["fingerprinted by an older embreg (no parts recorded)"]


def test_adding_a_term_changes_no_existing_fingerprint(tmp_path):
    """A new term module (here a plug-in, as a researcher adds one) leaves every arm's fingerprint as it was."""
    (tmp_path / "extra_term.py").write_text(textwrap.dedent('''
        from embreg.terms import term

        @term("extra", "an extra term", equation="0", monitor=True, regularizer=True)
        def extra(views):
            return views.z[0].sum() * 0
    '''))
    code = ("from embreg.params import compose_run\nfrom embreg.fingerprint import run_fingerprint\n"
            "print(' '.join(run_fingerprint(compose_run('default', [f'objective={a}'])) "
            "for a in ('pixels', 'random_init', 'supervised', 'vicreg', 'svmax', 'barlow', 'simsiam')))")
    env = {"PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}"}
    before = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**env, "EMBREG_TERMS": "extra_term"}).stdout
    assert before == after and len(before.split()) == 7
