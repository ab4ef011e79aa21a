"""The library's layout: two towers (the training core; embreg.sweep beside it), analysis reading
only files, no import loop, and one declaration of what training code is (the fingerprint's
input and the sweep stage's deps in dvc.yaml)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml

from embreg.fingerprint import NOT_TRAINING_CODE, PIPELINE_CODE, TRAINING_CODE, training_files

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "embreg"


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The embreg modules a file imports (anywhere in it, lazy imports included); ``from
    embreg.x import y`` counts as embreg.x.y when that is a module, else embreg.x."""
    modules = {module_name(p) for p in PKG.rglob("*.py")}
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("embreg")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embreg"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in modules else node.module)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) - {module_name(p)} for p in PKG.rglob("*.py")}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the import graph as a path, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_loop():
    assert find_cycle(graph()) is None


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_core_never_imports_sweep_analysis_or_tools():
    outside = ("embreg.sweep", "embreg.analysis", "embreg.bench", "embreg.audit", "embreg.cli", "embreg.params")
    for mod, deps in graph().items():
        if any(_in(mod, o) for o in outside):
            continue
        bad = {d for d in deps if any(_in(d, o) for o in outside)}
        assert not bad, f"core module {mod} imports {bad}"


def test_config_is_a_leaf():
    deps = graph()["embreg.config"]
    assert deps <= {"embreg.registry", "embreg.ablation"}, deps
    assert graph()["embreg.ablation"] <= {"embreg.registry"}


def test_sweep_and_analysis_import_only_torch_free_modules():
    """Static: what the sweep and the analysis import from the core."""
    allowed = {"embreg.config", "embreg.ablation", "embreg.registry", "embreg.io", "embreg.rundir",
               "embreg.fingerprint", "embreg.params", "embreg.params_checks", "embreg.overrides", "embreg.attempt",
               "embreg.checks", "embreg.terms"}  # embreg.terms: the registry; its term modules load on use
    for mod, deps in graph().items():
        if _in(mod, "embreg.sweep") or _in(mod, "embreg.analysis"):
            core = {d for d in deps if not (_in(d, "embreg.sweep") or _in(d, "embreg.analysis"))}
            assert core <= allowed, f"{mod} imports {core - allowed}"


def test_sweep_and_analysis_never_load_torch():
    """Dynamic: importing every sweep and analysis module (and the run-directory module) leaves
    torch unloaded."""
    mods = sorted(m for m in graph() if _in(m, "embreg.sweep") or _in(m, "embreg.analysis")) + [
        "embreg.rundir", "embreg.params", "embreg.fingerprint", "embreg.config", "embreg.attempt", "embreg.checks",
        "embreg.terms", "embreg.overrides", "embreg.params_checks", "embreg.ablation"]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_every_module_is_declared_once():
    """Each top-level entry of src/embreg is training code, pipeline code or neither, exactly once."""
    declared = [*TRAINING_CODE, *PIPELINE_CODE, *NOT_TRAINING_CODE]
    twice = sorted({d for d in declared if declared.count(d) > 1})
    assert not twice, f"declared twice in embreg/fingerprint.py: {twice}"
    present = {p.name for p in PKG.iterdir() if p.suffix == ".py" or (p.is_dir() and any(p.glob("*.py")))}
    undeclared, gone = sorted(present - set(declared)), sorted(set(declared) - present)
    assert not undeclared, (f"{undeclared}: declare each in embreg/fingerprint.py: in CODE_PARTS if it changes what a "
                            "run computes, PLUMBING if a run goes through it without changing its numbers, "
                            "PIPELINE_CODE if the sweep stage runs it, NOT_TRAINING_CODE otherwise")
    assert not gone, f"{gone}: declared in embreg/fingerprint.py but not in src/embreg; remove them there"


def test_fingerprint_hashes_exactly_the_training_core():
    files = {p.relative_to(PKG).parts[0] for p in training_files()}
    assert files == set(TRAINING_CODE)


def test_dvc_sweep_deps_are_the_declared_code():
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["sweep"]["deps"]
    src = {d.removeprefix("src/embreg/") for d in deps if d.startswith("src/embreg/")}
    code = set(TRAINING_CODE) | set(PIPELINE_CODE)
    assert not code - src, f"add to the sweep stage's deps in dvc.yaml: {sorted('src/embreg/' + m for m in code - src)}"
    assert not src - code, f"remove from the sweep stage's deps in dvc.yaml: {sorted('src/embreg/' + m for m in src - code)}"


def test_source_files_stay_small():
    """~300 lines per module at most: every file over it is named at once."""
    big = {str(p.relative_to(PKG)): n for p in sorted(PKG.rglob("*.py")) if (n := len(p.read_text().splitlines())) > 300}
    assert not big, (f"over 300 lines: {big}; split each by concern (a module per concept, e.g. a new term in its "
                     "own file under embreg/terms/) rather than squeezing comments out")
