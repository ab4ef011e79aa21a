"""params.yaml + params.local.yaml through the one typed loader."""

from __future__ import annotations

import pytest
import yaml

from embreg.params import REPO_ROOT, LocalParams, SlurmParams, load_params


def test_the_repository_params_load_with_the_launcher_defaults():
    p = load_params(REPO_ROOT / "params.yaml", site=REPO_ROOT / "no-such-site-file.yaml")
    assert p.launcher == "local" and p.data_dir == "data"
    assert p.dataset == "fashion_mnist" and p.mirror("fashion_mnist") == "/usr/share/datasets/fashion-mnist"
    assert p.mirror("cifar10") is None
    assert p.local == LocalParams() and p.slurm == SlurmParams()
    assert (p.pipeline, p.profile) == ("default", "default") and {"default", "robustness"} <= set(p.pipelines)


def test_site_file_overrides_the_launcher_sections_key_by_key(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"default": {"profile": "smoke"}, "launcher": "local", "slurm": {"partition": "gpu", "mem_gb": 8}}))
    (tmp_path / "params.local.yaml").write_text(yaml.safe_dump(
        {"launcher": "slurm", "slurm": {"account": "lab", "mem_gb": 16}, "local": {"max_parallel": 0}}))
    p = load_params(tmp_path / "params.yaml")
    assert p.profile == "smoke" and p.launcher == "slurm"
    assert (p.slurm.partition, p.slurm.account, p.slurm.mem_gb, p.slurm.timeout_min) == ("gpu", "lab", 16, 60)
    assert p.local.max_parallel == 0 and p.local.threads_per_job is None  # unset: sized for the profile


def test_unknown_launcher_key_fails_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"slurm": {"partiton": "gpu"}}))
    with pytest.raises(ValueError, match="slurm: unknown key 'partiton' \\(did you mean 'partition'\\?\\); valid: .*partition") as err:
        load_params(tmp_path / "params.yaml")
    assert "\n" not in str(err.value)


def test_the_gpu_keys_load_and_unset_ones_stay_unset(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "local": {"gpus": 2, "jobs_per_gpu": 4, "max_parallel": None},
        "slurm": {"cpus_per_gpu": 16, "mem_gb_per_gpu": 64, "gpus_per_node": None, "tasks_per_node": 2}}))
    p = load_params(tmp_path / "params.yaml", site=tmp_path / "none.yaml")
    assert p.local == LocalParams(max_parallel=None, threads_per_job=None, gpus=2, jobs_per_gpu=4)
    assert (p.slurm.cpus_per_gpu, p.slurm.mem_gb_per_gpu, p.slurm.tasks_per_node) == (16, 64, 2)
    # sized by embreg.sweep.resources from the profile's device
    assert (p.slurm.gpus_per_node, p.slurm.cpus_per_task, p.slurm.mem_gb) == (None, None, None)


@pytest.mark.parametrize("section, message", [
    ({"local": {"jobs_per_gpu": 0}}, "local.jobs_per_gpu=0: must be an integer >= 1"),
    ({"local": {"gpus": -1}}, "local.gpus=-1: must be an integer >= 0"),
    ({"local": {"gpus": None}}, "local.gpus=None: must be an integer >= 0"),
    ({"slurm": {"mem_gb_per_gpu": 0.5}}, "slurm.mem_gb_per_gpu=0.5: must be an integer >= 1"),
    ({"local": {"jobs_per_gpus": 2}}, "local: unknown key 'jobs_per_gpus' (did you mean 'jobs_per_gpu'?); valid: "
                                      "max_parallel, threads_per_job, gpus, jobs_per_gpu"),
    ({"slurm": {"cpu_per_gpu": 2}}, "slurm: unknown key 'cpu_per_gpu' (did you mean 'cpus_per_gpu'?); valid: "
                                    "nodes, tasks_per_node, gpus_per_node, cpus_per_task, timeout_min, "
                                    "max_num_timeout, array_parallelism, cpus_per_gpu, mem_gb_per_gpu, partition, "
                                    "account, qos, constraint, mem_gb, additional_parameters, detach"),
    ({"slurm": {"detach": "false"}}, "slurm.detach=false: must be true or false"),  # a string: would read as true
    ({"slurm": {"detach": 1}}, "slurm.detach=1: must be true or false"),
    ({"slurm": {"detach": None}}, "slurm.detach=None: must be true or false"),
    ({"slurm": {"detatch": True}}, "slurm: unknown key 'detatch' (did you mean 'detach'?); valid: "
                                   "nodes, tasks_per_node, gpus_per_node, cpus_per_task, timeout_min, "
                                   "max_num_timeout, array_parallelism, cpus_per_gpu, mem_gb_per_gpu, partition, "
                                   "account, qos, constraint, mem_gb, additional_parameters, detach"),
])
def test_a_bad_gpu_key_is_one_line(tmp_path, section, message):
    from embreg.checks import ConfigError

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(section))
    with pytest.raises(ConfigError) as err:
        load_params(tmp_path / "params.yaml")
    assert str(err.value) == f"{tmp_path / 'params.yaml'}: {message}"


def test_detach_is_a_launcher_setting_of_the_site_file_too(tmp_path):
    """``slurm.detach`` (false by default) from params.yaml or params.local.yaml; no sbatch flag."""
    from embreg.sweep.commands import slurm_overrides

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"launcher": "slurm", "slurm": {"detach": True}}))
    assert load_params(tmp_path / "params.yaml", site=tmp_path / "none.yaml").slurm.detach is True
    (tmp_path / "params.local.yaml").write_text(yaml.safe_dump({"slurm": {"detach": False}}))
    params = load_params(tmp_path / "params.yaml")
    assert params.slurm.detach is False and SlurmParams().detach is False
    assert not any("detach" in ov for ov in slurm_overrides(params)[0])
