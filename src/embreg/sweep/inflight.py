"""Which runs of a plan SLURM jobs still hold, and the scheduler's verdict on those lost with
their jobs.

A run says which job holds it once it has started (``slurm_job_id`` in its status, written by
the run); before, its 'queued' status (written by the sweep) names only the sweep, whose array
task for it is not known: it is in flight while a job of that sweep that no run claims is still
active (a task that has not started yet, or has not written its status yet).
"""

from __future__ import annotations

from embreg.rundir import IN_FLIGHT, State, run_dir, write_status
from embreg.sweep import scheduler
from embreg.sweep.plan import Job, Plan, observe_all


def unclaimed_jobs(sweep: str, claimed: set[str]) -> dict[str, str]:
    """The jobs of ``sweep`` (array tasks one by one) that no run's status names, and their
    states: the ones that may still start a run that is only queued."""
    return {job: state for job, state in scheduler.jobs_named(sweep).items() if job not in claimed}


def in_flight(plan: Plan) -> dict[Job, str]:
    """The plan's runs that a SLURM job still holds (pending, running, requeued): {run: its
    sweep}. Empty where no SLURM answers: without the scheduler there is no evidence."""
    seen = {job: s.status for job, s in observe_all(plan).items() if s.state in IN_FLIGHT}
    on_slurm = {job: st for job, st in seen.items() if st.get("slurm_job_id") or st.get("sweep")}
    if not on_slurm or not scheduler.available():
        return {}
    claimed = {str(st["slurm_job_id"]) for st in seen.values() if st.get("slurm_job_id")}
    jobs = scheduler.job_states(sorted(claimed))
    waiting = {st["sweep"] for st in on_slurm.values() if not st.get("slurm_job_id")}
    open_sweeps = {name for name in waiting
                   if any(state in scheduler.ACTIVE for state in unclaimed_jobs(name, claimed).values())}
    live = {}
    for job, st in on_slurm.items():
        job_id = st.get("slurm_job_id")
        if (jobs.get(str(job_id)) in scheduler.ACTIVE) if job_id else st["sweep"] in open_sweeps:
            live[job] = str(st.get("sweep") or "")
    return live


def ended_in(plan: Plan, sweeps: list[str], live: dict[Job, str]) -> set[Job]:
    """The runs of ``sweeps`` that ended without a result and no job holds any longer: reported
    when those sweeps are collected, not submitted again before."""
    if not sweeps:
        return set()
    return {job for job, s in observe_all(plan).items()
            if job not in live and s.state != State.DONE and s.status.get("sweep") in sweeps}


def reconcile(plan: Plan, sweep: str) -> dict[Job, State]:
    """After the scheduler is done with the sweep: a run still queued, running or interrupted
    was lost with its job (cancelled, timed out, out of memory, node failure). Record the
    scheduler's verdict in its status file, with the job id and log, so the table of failed
    runs, the analysis and the next `dvc repro` see it. A run whose job never started has no
    job id: its verdict is that of the sweep's jobs that no run claims. Returns the runs so marked."""
    sched = scheduler.jobs_named(sweep)
    seen = observe_all(plan)  # the latest attempt's status, and the file it is in
    statuses = {job: s.status for job, s in seen.items()}
    claimed = {st.get("slurm_job_id") for st in statuses.values()}
    # jobs no run claims: they never started a run. SLURM forgets an array task cancelled while
    # pending, so no record at all means cancelled; a record is the verdict (FAILED, ...)
    unclaimed = sorted({v for k, v in sched.items() if k not in claimed})
    lost = {}
    for job, st in statuses.items():
        if st.get("state") not in IN_FLIGHT or st.get("sweep", sweep) != sweep:
            continue
        job_id = st.get("slurm_job_id")
        if job_id:
            # the sweep's jobs are all over: no record now means the job is gone too
            verdict = sched.get(job_id, "UNKNOWN")
            state = scheduler.overruled(st["state"], verdict)
            if state is None:
                continue  # requeued or running again: not lost
            error = f"SLURM job {job_id} ended {verdict if verdict != 'UNKNOWN' else 'unknown to the scheduler'} before the run did"
        else:
            state = State.CANCELLED if set(unclaimed) <= {"CANCELLED"} else State.FAILED
            verdict = ", ".join(unclaimed) or "cancelled while pending: no record left"
            error = f"its SLURM job ended before the run started ({verdict}); see the sweep's job logs"
        where = seen[job].path
        write_status(where.parent if where else run_dir(plan.configs[job]), {**st, "state": state, "error": error})
        lost[job] = state
    return lost
