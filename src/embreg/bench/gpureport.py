"""BENCH.md's GPU section: one table or line per part of ``bench.gpu``, or why it is missing."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate


def _precision_rows(profile: str, part: dict[str, Any] | str) -> list[list[Any]]:
    if isinstance(part, str):
        return [[profile, part, "", "", "", "", "", ""]]
    rows = []
    for name in ("fp32", "bf16", "svmax"):
        if name not in part:
            continue
        p = part[name]
        label = "bf16, SVMax arm" if name == "svmax" else name
        bare = p.get("bare_images_per_sec")
        rows.append([profile, label, part["batch"], p["images_per_sec"], bare if bare else "",
                     p["images_per_sec"] / bare if bare else "", p["peak_memory_mb"], p.get("bare_peak_memory_mb", "")])
    return rows


def _loop(loop: dict[str, Any] | str) -> str:
    if isinstance(loop, str):
        return f"Real loop against the step: {loop}."
    return (f"Real loop (`pretrain.pretrain`, CIFAR-10 profile, bf16, one epoch of {loop['steps']} steps "
            f"with its checkpoint) {loop['loop_ms_per_step']:.1f} ms/step against the library's step alone "
            f"{loop['step_ms_per_step']:.1f} ms/step: ratio {loop['ratio']:.3f} (the real profile writes "
            "one checkpoint per epoch of 195 steps, so this is a lower bound).")


def _syncs(syncs: dict[str, Any] | str) -> str:
    if isinstance(syncs, str):
        return f"Host syncs per step: {syncs}."
    n1, n2 = syncs["lengths"]
    arms = "; ".join(f"{arm}: {syncs[arm]['loop_per_step']:.2f} per loop step, "
                     f"{syncs[arm]['step_per_step']:.2f} per step alone" for arm in ("vicreg", "svmax", "svmax_all")
                     if arm in syncs)
    text = (f"Host syncs per step (`torch.cuda.set_sync_debug_mode(\"warn\")`, the {syncs.get('profile', '')} "
            f"profile on Fashion-MNIST-like images, loops of {n2} and {n1} steps, their difference over {n2 - n1}; "
            f"one `.item()` counted {syncs['calibration']}): {arms}.")
    if "term" not in syncs:
        return text
    return text + "\n\nSVMax's term alone (both views, forward + backward) on a low-rank-plus-noise embedding:\n\n" + \
        tabulate([[f"{r['b']}x{r['d']}", r["path"], r["eig_ratio"], r["syncs_per_call"]] for r in syncs["term"]],
                 headers=["b x d", "path", "eigenvalue ratio", "syncs"], tablefmt="github", floatfmt=".2g")


def _svd(svd: list[dict[str, Any]] | str) -> str:
    if isinstance(svd, str):
        return f"SVMax against svdvals: {svd}."
    return ("SVMax (`mean_singular_value`) against `torch.linalg.svdvals(F.normalize(e, dim=1)).mean()`, "
            "forward + backward, float32:\n\n" + tabulate(
                [[f"{r['b']}x{r['d']}", r["ours_ms"], r["svdvals_ms"], r["speedup"], r["rel_diff"]] for r in svd],
                headers=["b x d", "SVMax ms", "svdvals ms", "speed-up", "rel diff"], tablefmt="github", floatfmt=".4g"))


def _eval(ev: dict[str, Any] | str) -> str:
    if isinstance(ev, str):
        return f"Evaluation's share of a GPU run: {ev}."
    return (f"Evaluation's share of the {ev['runs']} GPU run(s) under {ev['run_dir']}: {ev['eval_seconds']:.0f} s "
            f"of {ev['pretrain_seconds'] + ev['eval_seconds']:.0f} s ({100 * ev['fraction']:.1f}%).")


def gpu_markdown(gpu: dict[str, Any] | str, ev: dict[str, Any] | str) -> str:
    if isinstance(gpu, str):
        return f"{gpu}.\n\n{_eval(ev)}"
    rows = [row for p in gpu["profiles"] for row in _precision_rows(p, gpu.get(p, "not measured"))]
    table = tabulate(rows, headers=["profile", "precision", "batch", "step images/s", "bare images/s",
                                    "step / bare", "step peak MiB", "bare peak MiB"],
                     tablefmt="github", floatfmt=".4g")
    return "\n\n".join([
        f"{gpu['device']}. The library's step (`train_step` + the run's optimizer) and the bare reference "
        "(torchvision ResNet + the same projector on ready views, same precision and memory format), "
        "random images on the device:", table,
        _loop(gpu.get("loop", "not measured")), _syncs(gpu.get("syncs", "not measured")),
        _svd(gpu.get("svd", "not measured")), _eval(ev)])
