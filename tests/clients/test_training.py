"""Client training: the vmap path equals the sequential path; batch plans are what they claim."""

import torch

from skymask_ray.clients.training import SGDSettings, batch_plan, num_steps, train_sequential, train_vmap
from skymask_ray.models import ParamSpec, build_model


def _clients(sizes, shape=(1, 28, 28), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in sizes]


def _gens(n):
    return [torch.Generator().manual_seed(100 + k) for k in range(n)]


def test_vmap_equals_sequential_with_uneven_clients():
    model = build_model("cnn", (1, 28, 28), 10, seed=1)
    spec = ParamSpec.of(model)
    w0 = spec.flatten(model)
    data = _clients([40, 33, 50, 7, 0, 64])
    s = SGDSettings(lr=0.5, batch_size=8, epochs=2, grad_clip=0.01)
    seq, _ = train_sequential(model, spec, w0, data, _gens(len(data)), s)
    vm = train_vmap(model, spec, w0, data, _gens(len(data)), s, chunk=4)
    assert seq.abs().max() > 1e-3  # training really moved the weights
    torch.testing.assert_close(vm, seq, atol=1e-5, rtol=0)
    assert torch.all(seq[4] == 0)  # a client without data returns a zero update


def test_vmap_equals_sequential_fixed_steps_mlp():
    model = build_model("mlp", (1, 8, 8), 10, seed=2)
    spec = ParamSpec.of(model)
    w0 = spec.flatten(model)
    data = _clients([5, 17, 30], shape=(1, 8, 8))
    s = SGDSettings(lr=0.1, batch_size=4, steps=9)
    seq, _ = train_sequential(model, spec, w0, data, _gens(3), s)
    vm = train_vmap(model, spec, w0, data, _gens(3), s, chunk=2)
    torch.testing.assert_close(vm, seq, atol=1e-5, rtol=0)


def test_update_sign_convention_reduces_loss():
    """g = w_t - w_k: stepping w - g must lower the client's own training loss."""
    import torch.nn.functional as F
    from torch.func import functional_call

    model = build_model("lr", (1, 8, 8), 10, seed=3)
    spec = ParamSpec.of(model)
    w0 = spec.flatten(model)
    data = _clients([64], shape=(1, 8, 8))
    upd, _ = train_sequential(model, spec, w0, data, _gens(1), SGDSettings(lr=0.5, batch_size=16, epochs=5))
    x, y = data[0]

    def loss(w):
        return float(F.cross_entropy(functional_call(model, spec.unflatten(w), (x,)), y))

    assert loss(w0 - upd[0]) < loss(w0) - 0.05


def test_batch_plan_epochs_and_steps():
    g = torch.Generator().manual_seed(0)
    s = SGDSettings(lr=1, batch_size=4, epochs=2)
    plan = batch_plan(10, s, g)
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(plan[:3]).tolist()) == list(range(10))  # each epoch is a permutation
    assert len(plan) == num_steps(10, s)
    s2 = SGDSettings(lr=1, batch_size=4, steps=7)
    assert len(batch_plan(10, s2, g)) == 7 == num_steps(10, s2)
    assert batch_plan(0, s, g) == [] and num_steps(0, s) == 0


def test_batchnorm_model_trains_and_updates_its_statistics():
    """resnet20: train-mode BatchNorm under torch.func updates each client's own copy of the statistics."""
    from skymask_ray.models import buffers_of

    model = build_model("resnet20", (3, 16, 16), 10, seed=0)
    spec = ParamSpec.of(model)
    w0, bufs = spec.flatten(model), buffers_of(model)
    data = _clients([20, 12], shape=(3, 16, 16))
    upd, out = train_sequential(model, spec, w0, data, _gens(2), SGDSettings(lr=0.1, batch_size=8), bufs)
    assert upd.abs().max() > 0
    assert not torch.equal(out[0]["bn.running_mean"], bufs["bn.running_mean"])  # statistics moved
    assert not torch.equal(out[0]["bn.running_mean"], out[1]["bn.running_mean"])  # per client
    assert int(out[0]["bn.num_batches_tracked"]) == 3 and int(bufs["bn.num_batches_tracked"]) == 0


def test_cnn_forward_is_the_papers_conv_relu_pool():
    """The cnn applies relu after max-pool (a quarter of the work); values and gradients equal conv-relu-pool."""
    import torch.nn.functional as F

    from skymask_ray.models import build_model

    model = build_model("cnn", (1, 28, 28), 10, seed=0)
    x = torch.randn(16, 1, 28, 28)

    def reference(m):
        h = F.max_pool2d(F.relu(m.conv1(x)), 2)
        h = F.max_pool2d(F.relu(m.conv2(h)), 2)
        return m.fc2(F.relu(m.fc1(h.flatten(1))))

    out, ref = model(x), reference(model)
    torch.testing.assert_close(out, ref)
    g = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    g_ref = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
