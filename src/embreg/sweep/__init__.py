"""The sweep machinery, beside the training core: plan the runs of the ablations
(``plan``), size what their jobs get from the machine or the cluster (``resources``: GPUs,
jobs at once, CPUs, threads), write them as Hydra multiruns (``commands``), launch and wait
for them locally or on SLURM (``launch``), ask SLURM about jobs (``scheduler``) and which runs
its jobs still hold (``inflight``), submit a SLURM sweep and leave it (``detach``), report run
states (``status``, the `embreg status` command), and carry finished runs between machines in
one archive (``bundle``: its format; ``export`` and ``merge``: `embreg export` and `embreg import`),
and carry finished runs over to a new fingerprint where nothing they computed with changed
(``migrate``: `embreg migrate`; ``legacy``: configs and code of earlier revisions).

It reads run directories through ``embreg.rundir`` and composes configs through
``embreg.params``; it never imports torch nor the training core's torch modules (the jobs it
starts run ``embreg.train``). tests/test_layout.py checks this.
"""
