"""SkyMask's server-side cost: stacked-tensor masks (ours) vs per-client parameter lists (the reference code).

For N clients (+ the server) of the paper's Fashion-MNIST cnn (P = 139,960)
it times 20 mask-training steps on a 100-sample root batch, plus the Gram/PCA
+ GMM clustering, and measures each variant's peak resident memory in a fresh
subprocess (so one variant's allocations cannot hide the other's).

* ``stacked``: skymask_ray's trainer: (N+1) x P masks over the stacked updates, the mask
  gradient in closed form per coordinate, one fused ``torch.compile`` pass per
  step over coordinate-major rows, KernelPCA on the Gram matrix.
* ``stacked_eager``: the same trainer with ``skymask.kernel = eager`` (the same
  formulas as separate torch ops over cache-sized blocks, no compiler).
* ``per_client``: the public reference structure: one mask tensor per client
  and per layer, the masked layer a Python sum over clients, autograd through it,
  sklearn PCA on the stacked binary masks.

    python -m benchmarks.mask_cost [--clients 100,500,1000] [--steps 20]

Prints a table and writes benchmarks/results/mask_cost.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import click

from skymask_ray.markdown import markdown_table

from benchmarks.common import ROOT, comma_list, invocation, module_argv, peak_rss_mb, results_path, script, write_result


def run_variant(variant: str, n: int, steps: int) -> dict:
    """Time and peak memory of one variant, in this process (called in a subprocess).

    A 5-client, 1-step warm-up runs first so one-off costs (lazy imports, first
    kernel calls, compiling the fused mask step) are not charged to either variant.
    """
    _variant(variant, 5, 1)
    return _variant(variant, n, steps)


def _variant(variant: str, n: int, steps: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from torch.func import functional_call

    from skymask_ray.config import SkyMaskConfig
    from skymask_ray.models import ParamSpec, build_model
    from skymask_ray.skymask.trainer import LocalShards, RootLoss, train_and_select

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = build_model("cnn", (1, 28, 28), 10)
    spec = ParamSpec.of(model)
    w = spec.flatten(model)
    updates = 0.01 * torch.randn(n + 1, spec.numel)  # row 0: the server
    x, y = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,))
    kernel = "eager" if variant == "stacked_eager" else "compiled"  # compiled also in the small warm-up
    cfg = SkyMaskConfig(mask_epochs=steps, early_stop_step=0, kernel=kernel)
    base_rss = peak_rss_mb()
    t0 = time.perf_counter()
    if variant.startswith("stacked"):
        shards = LocalShards(updates, w, cfg, 1e7)
        train_and_select(shards, RootLoss(model, spec, {}, (x, y), torch.device("cpu")), 100, spec.numel, cfg, 0, 1)
    else:
        models = w[None] - updates
        del updates
        per = [spec.unflatten(models[k]) for k in range(n + 1)]
        masks = [{name: torch.ones_like(t, requires_grad=True) for name, t in per[k].items()} for k in range(n + 1)]
        opt = torch.optim.SGD([m for d in masks for m in d.values()], lr=1e7)
        for _ in range(steps):
            params = {}
            for name in spec.names:
                num = sum(torch.sigmoid(masks[k][name]) * per[k][name] for k in range(n + 1))
                den = sum(torch.sigmoid(masks[k][name]) for k in range(n + 1))
                params[name] = num / den
            loss = F.cross_entropy(functional_call(model, params, (x,)), y)
            opt.zero_grad()
            loss.backward()
            for d in masks:
                for m in d.values():
                    m.grad.clamp_(-1e-7, 1e-7)
            opt.step()
        bits = np.stack([torch.cat([(torch.sigmoid(m) > 0.5).reshape(-1) for m in d.values()]).numpy()
                         for d in masks]).astype(np.float32)
        coords = PCA(n_components=2, random_state=0).fit_transform(bits)
        GaussianMixture(2, random_state=0, reg_covar=1e-6).fit_predict(coords)
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    return {"variant": variant, "clients": n, "steps": steps, "seconds": seconds, "peak_rss_mb": peak,
            "extra_rss_mb": peak - base_rss}


@script(__doc__)
@click.option("--clients", callback=comma_list(int), default="100,500,1000", help="Comma-separated client counts.")
@click.option("--steps", type=int, default=20, help="Mask-training steps.")
@click.option("--variant", hidden=True)
def main(clients: list[int], steps: int, variant: str | None) -> None:
    if variant:
        (n,) = clients
        print(json.dumps(run_variant(variant, n, steps)))
        return
    rows = []
    for n in clients:
        for variant in ("stacked", "stacked_eager", "per_client"):
            cmd = [*module_argv(__file__), "--variant", variant, "--clients", str(n), "--steps", str(steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    lines = []
    for n in sorted({r["clients"] for r in rows}):
        p = next(r for r in rows if r["clients"] == n and r["variant"] == "per_client")
        for r in (r for r in rows if r["clients"] == n):
            lines.append([n, r["variant"], f"{r['seconds']:.2f}", f"{r['peak_rss_mb']:.0f}",
                          f"{p['seconds'] / r['seconds']:.2f}x", f"{r['peak_rss_mb'] / p['peak_rss_mb']:.2f}"])
    table = markdown_table(["N", "variant", "seconds (20 steps + clustering)", "peak RSS MB", "speed-up",
                            "memory ratio"], lines)
    print(table)
    write_result(
        results_path("mask_cost.md"),
        f"# SkyMask mask training: stacked tensors vs per-client parameter lists\n\n"
        f"`{invocation(__file__)}`, cnn (P = 139,960), {os.cpu_count()} CPU cores, root batch 100, "
        f"{steps} SGD steps (lr 1e7, clamp 1e-7) + clustering. Speed-up and memory ratio are relative to "
        f"per_client.\n\n{table}\n")


if __name__ == "__main__":
    main()
