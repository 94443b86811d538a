"""evaluate(): the global model's test metrics at given weights, leaving the module as it was."""

import torch
import torch.nn.functional as F
from torch.func import functional_call

from skymask_ray.evaluation import evaluate
from skymask_ray.models import ParamSpec, buffers_of, build_model


def test_evaluate_matches_a_functional_call_and_restores_the_module():
    model = build_model("resnet20", (3, 8, 8), 4, seed=0)
    spec = ParamSpec.of(model)
    before, bufs_before = spec.flatten(model), buffers_of(model)
    w = before + 0.1 * torch.randn(spec.numel, generator=torch.Generator().manual_seed(1))
    bufs = {n: (b + 0.5 if b.is_floating_point() else b) for n, b in bufs_before.items()}
    x, y = torch.randn(30, 3, 8, 8), torch.randint(0, 4, (30,))
    ev = evaluate(model, spec, w, bufs, x, y, batch=7)
    model.eval()
    with torch.no_grad():
        out = functional_call(model, (spec.unflatten(w), bufs), (x,))
    assert ev.accuracy == (out.argmax(1) == y).sum().item() / len(y)
    assert abs(ev.loss - F.cross_entropy(out, y).item()) < 1e-4
    assert ev.backdoor_success is None
    torch.testing.assert_close(spec.flatten(model), before)
    for n, b in buffers_of(model).items():
        torch.testing.assert_close(b, bufs_before[n])
