"""params.yaml's pipeline sections: the knobs a user turns, turned into Hydra overrides, checked
one line per problem, equal to the profiles' own values as committed, and declared in dvc.yaml by
exactly the stages that read them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from embreg.checks import ConfigError
from embreg.params import REPO_ROOT, PipelineSection, group_options, load_params, profile_knobs
from embreg.params_checks import KNOBS

SMOKE = {"profile": "smoke", "seeds": [0, 1], "sweep_seeds": [0], "ablations": ["layers"], "epochs": 1,
         "steps_per_epoch": 2, "batch_size": 16, "device": "cpu", "precision": "fp32", "overrides": ["optim.lr=0.002"]}


def _write(tmp_path: Path, **sections) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dataset": "fashion_mnist", **sections}))
    return tmp_path / "params.yaml"


def test_the_committed_values_are_the_profiles_own():
    """The pipelines take their knobs from params.yaml, hand runs from conf/profile: the two agree
    as committed, so neither drifts from the other unseen."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for name in ("default", "robustness"):
        section = raw[name]
        own = profile_knobs(section["profile"])
        assert set(section) - {"profile", "overrides"} <= set(KNOBS), name
        assert {k: v for k, v in section.items() if k in KNOBS} == {k: own[k] for k in section if k in KNOBS}, name
        assert section["overrides"] == [], name
    assert set(raw["default"]) == {"profile", "overrides", *KNOBS}


def test_a_section_becomes_its_profile_and_hydra_overrides(tmp_path):
    params = load_params(_write(tmp_path, default={**SMOKE, "epochs": None}), site=tmp_path / "none.yaml")
    assert (params.pipeline, params.profile) == ("default", "smoke")
    assert params.overrides == ["profile.seeds=[0,1]", "profile.sweep_seeds=[0]", "profile.ablations=[layers]",
                                "pretrain.steps_per_epoch=2", "optim.batch_size=16", "profile.device=cpu",
                                "pretrain.precision=fp32", "optim.lr=0.002"]  # epochs null: the profile's own
    from embreg.params import compose_run

    cfg = compose_run(params.profile, params.overrides)
    assert (cfg.profile.seeds, cfg.pretrain.epochs, cfg.pretrain.steps_per_epoch, cfg.optim.batch_size) == \
        ([0, 1], profile_knobs("smoke")["epochs"], 2, 16)
    assert PipelineSection(profile="smoke").hydra_overrides() == []


def test_pipelines_and_profiles_are_chosen_by_name(tmp_path):
    path = _write(tmp_path, default=SMOKE, robustness={"profile": "robustness", "seeds": [4]})
    params = load_params(path, site=tmp_path / "none.yaml")
    other = params.for_pipeline("robustness")
    assert (other.pipeline, other.profile, other.overrides) == ("robustness", "robustness", ["profile.seeds=[4]"])
    assert params.for_profile("robustness") == other  # a profile takes the knobs of the section running it
    assert params.for_profile("smoke") == params  # ... here the default pipeline's
    bare = params.for_profile("default")  # no section runs it: its own values
    assert (bare.pipeline, bare.profile, bare.overrides) == (None, "default", [])
    with pytest.raises(ValueError, match=r"^params.yaml has no pipeline section 'hosts'; sections: default, "
                                         r"robustness \(add one: hosts: \{profile: <name>\}\)$"):
        params.for_pipeline("hosts")
    assert load_params(path, site=tmp_path / "none.yaml", pipeline="robustness") == other


@pytest.mark.parametrize("section, message", [
    ({"epochz": 3}, "default: unknown key 'epochz' (did you mean 'epochs'?); valid: profile, seeds, sweep_seeds, "
                    "ablations, epochs, steps_per_epoch, batch_size, device, precision, overrides"),
    ({"profile": "huge"}, "default.profile: unknown profile 'huge'; valid: {profiles}"),
    ({"seeds": [0, 0]}, "default.seeds=[0, 0]: must be a list of distinct integers >= 0, or null"),
    ({"seeds": 3}, "default.seeds=3: must be a list of distinct integers >= 0, or null"),
    ({"ablations": ["layer"]}, "default.ablations: unknown ablation 'layer'; valid: {ablations}"),
    ({"epochs": 0}, "default.epochs=0: must be an integer >= 1"),
    ({"batch_size": 1}, "default.batch_size=1: must be an integer >= 2"),
    ({"device": "gpu"}, "default.device=gpu: must be cpu, cuda, cuda:<index> or mps, or null"),
    ({"precision": "fp16"}, "default.precision=fp16: unknown; valid: fp32, bf16"),
    ({"overrides": ["pretrain.epochs"]}, "default.overrides: malformed override 'pretrain.epochs'; an override is "
                                         "key=value, e.g. optim.lr=0.01"),
    ({"overrides": ["pretrain.epochs=2"]}, "default.overrides: 'pretrain.epochs=2' sets what default.epochs sets; "
                                           "change default.epochs"),
    ({"overrides": ["profile=smoke"]}, "default.overrides: 'profile=smoke' chooses the profile; set default.profile "
                                       "instead"),
    ({"overrides": ["dataset.subset_seed=3"]}, "default.overrides: 'dataset.subset_seed=3' would not reach the "
                                               "prepared data; set `dataset` in params.yaml or the subsets in "
                                               "conf/dataset/<name>.yaml"),
])
def test_a_bad_section_is_one_line_naming_the_fix(tmp_path, section, message):
    path = _write(tmp_path, default={**SMOKE, **section})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    expected = message.format(profiles=", ".join(group_options("profile")),
                              ablations=", ".join(group_options("ablation")))
    assert str(err.value) == f"{path}: {expected}"


def test_a_null_knob_lets_the_profile_set_it_and_an_override_too(tmp_path):
    path = _write(tmp_path, default={**SMOKE, "epochs": None, "overrides": ["pretrain.epochs=3"]})
    assert load_params(path).overrides[-1] == "pretrain.epochs=3"


def test_the_old_layout_and_unknown_sections_are_refused(tmp_path):
    path = _write(tmp_path, profile="smoke", overrides=[], defualt={"seeds": [0]})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value).splitlines() == [
        f"{path}: 'overrides' is a pipeline's setting: set it in a pipeline's section, e.g. default.overrides",
        f"{path}: 'profile' is a pipeline's setting: set it in a pipeline's section, e.g. default.profile",
        f"{path}: unknown key 'defualt'; valid: dataset, data, launcher, local, slurm, or a pipeline's section "
        "(a mapping with profile: <name>)"]


def test_each_stage_declares_exactly_the_params_it_reads():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    declared = {name: stage.get("params", []) for name, stage in stages.items()}
    pipelines = load_params(REPO_ROOT / "params.yaml").pipelines  # default, robustness, hosts, ...
    expected = {"prepare": ["dataset", "data.dir", "data.mirrors.${dataset}"]}  # never a pipeline's knob
    for name in pipelines:
        stage = "" if name == "default" else f"{name}_"
        expected |= {f"{stage}sweep": [name, "dataset", "data.dir"], f"{stage}analyze": [f"{name}.profile"]}
    assert declared == expected
    # where jobs run changes no result: no stage declares the launcher's sections
    assert not {"launcher", "local", "slurm"} & {p.split(".")[0] for ps in declared.values() for p in ps}
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["sweep"]["outs"]]
    assert outs == ["results/${default.profile}/runs"]
    assert stages["robustness_sweep"]["cmd"].endswith("--pipeline robustness")
