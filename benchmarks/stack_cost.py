"""The coordinate-major stacking of SkyMask's updates: blocked copy vs one transposing copy.

Each round the driver writes the N x P client updates (and the server's) into
P x (N+1) memory, the layout the mask trainer works in
(:func:`skymask_ray.skymask.trainer.stack_updates`). This times that copy side
by side with a single ``out[1:] = updates`` (what it did before), on the same
random updates, interleaved, best of --repeats, and checks both give the same
matrix. P = 139,960 (the paper's Fashion-MNIST cnn).

    python -m benchmarks.stack_cost [--clients 500,2000,5000] [--repeats 3]

Prints a table and writes benchmarks/results/stack_cost.md.
"""

from __future__ import annotations

import os
import platform
import time

import click
import torch

from skymask_ray.markdown import markdown_table
from skymask_ray.skymask.trainer import STACK_BLOCK_ROWS, stack_updates

from benchmarks.common import comma_list, invocation, results_path, script, write_result

P = 139_960


def one_copy(updates: torch.Tensor, server_update: torch.Tensor) -> torch.Tensor:
    """The previous stacking: the whole transposing copy as one operation."""
    out = torch.empty(updates.shape[1], updates.shape[0] + 1).T
    out[0] = server_update
    out[1:] = updates
    return out


@script(__doc__)
@click.option("--clients", callback=comma_list(int), default="500,2000,5000", help="Comma-separated client counts.")
@click.option("--repeats", type=int, default=3, help="Interleaved runs; the best is kept.")
def main(clients: list[int], repeats: int) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for n in clients:
        updates, server = torch.randn(n, P), torch.randn(P)
        best = {"one copy": float("inf"), "blocked": float("inf")}
        for _ in range(repeats):
            for name, fn in (("one copy", one_copy), ("blocked", stack_updates)):
                t0 = time.perf_counter()
                out = fn(updates, server)
                best[name] = min(best[name], time.perf_counter() - t0)
                assert torch.equal(out[1:], updates) and torch.equal(out[0], server)
                del out
        del updates
        rows.append((n, best["one copy"], best["blocked"]))
        print(f"N={n}: one copy {best['one copy']:.3f} s, blocked {best['blocked']:.3f} s, "
              f"{best['one copy'] / best['blocked']:.1f}x", flush=True)
    table = markdown_table(["N", "one copy (s)", "blocked (s)", "speed-up"],
                           [[n, f"{a:.3f}", f"{b:.3f}", f"{a / b:.1f}x"] for n, a, b in rows], align="rrrr")
    out = write_result(
        results_path("stack_cost.md"),
        f"# Stacking N x P updates coordinate-major (`{invocation(__file__)}`)\n\n"
        f"P = {P:,}, float32, {torch.get_num_threads()} torch threads, best of {repeats} interleaved runs; "
        f"blocks of {STACK_BLOCK_ROWS} clients. Machine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"torch {torch.__version__}.\n\n" + table + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
