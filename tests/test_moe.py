"""medmoe.moe against hand computations: a changed formula must fail here."""

from __future__ import annotations

import doctest
import importlib
import math
import statistics

import pytest
import torch
from torch import nn

from medmoe.moe import (
    HardRouter,
    NoisyTopKGate,
    SoftGate,
    cv_squared,
    dispatch_combine,
    diversity_loss,
    expert_load,
    gate_entropy,
    importance_load_loss,
    mutual_information,
    normalized_mutual_information,
    plan_dispatch,
    router_z_loss,
    switch_balance_loss,
)


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def H(ps):
    return -sum(p * math.log(p) for p in ps if p > 0)


# ---------------------------------------------------------------- SoftGate (MLMoE Eq. 3)
def _soft_gate(learn=True, tau=2.0):
    gate = SoftGate(in_features=(1, 1), num_experts=2, learn_temperature=learn, init_temperature=tau)
    with torch.no_grad():
        gate.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        gate.proj.bias.copy_(torch.tensor([0.5, -0.5]))
    return gate


def test_soft_gate_matches_eq3_by_hand():
    gate = _soft_gate(tau=2.0)
    ft, fv = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [-1.0]])
    out = gate(ft, fv)
    # s = [ft + 0.5, fv - 0.5]; g = softmax(s / 2)
    want = [softmax([(1 + 0.5) / 2, (2 - 0.5) / 2]), softmax([(3 + 0.5) / 2, (-1 - 0.5) / 2])]
    assert torch.allclose(out.weights, torch.tensor(want), atol=1e-6)
    assert torch.equal(out.weights, out.probs)
    assert out.indices.tolist() == [[0], [0]]
    assert math.isclose(gate.temperature.item(), 2.0, rel_tol=1e-6)


def test_soft_gate_without_tau_is_plain_softmax_and_tau_not_learned():
    gate = _soft_gate(learn=False, tau=1.0)
    out = gate(torch.tensor([[1.0]]), torch.tensor([[2.0]]))
    assert torch.allclose(out.weights, torch.tensor([softmax([1.5, 1.5])]))
    names = {n for n, _ in gate.named_parameters()}
    assert names == {"proj.weight", "proj.bias"}


def test_soft_gate_gradient_reaches_projection_and_tau():
    gate = _soft_gate(tau=0.7)
    out = gate(torch.tensor([[1.0], [0.2]]), torch.tensor([[0.3], [2.0]]))
    (out.weights[:, 0] * torch.tensor([1.0, -2.0])).sum().backward()
    assert gate.proj.weight.grad.abs().sum() > 0
    assert gate.log_tau.grad is not None and gate.log_tau.grad.abs() > 0
    # d g_0 / d log_tau for one sample: g0 = sigmoid((s0 - s1)/tau) -> -g0 g1 (s0 - s1)/tau
    gate.zero_grad()
    out = gate(torch.tensor([[1.0]]), torch.tensor([[0.3]]))
    out.weights[0, 0].backward()
    s0, s1, tau = 1.5, -0.2, 0.7
    g0 = 1 / (1 + math.exp(-(s0 - s1) / tau))
    assert math.isclose(gate.log_tau.grad.item(), -g0 * (1 - g0) * (s0 - s1) / tau, rel_tol=1e-4)


@pytest.mark.parametrize("shape", [(1, 3), (4, 3), (2, 5, 3)])
def test_soft_gate_shapes_and_single_expert(shape):
    gate = SoftGate(in_features=3, num_experts=1)
    out = gate(torch.randn(*shape))
    assert out.weights.shape == (*shape[:-1], 1) and torch.all(out.weights == 1)


def test_soft_gate_bad_input_named():
    gate = SoftGate(in_features=(4, 2), num_experts=3)
    with pytest.raises(ValueError, match="expects 2 input"):
        gate(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"input 1 must have width \(last dimension\) 2"):
        gate(torch.randn(2, 4), torch.randn(2, 3))
    with pytest.raises(ValueError, match="rank"):
        gate(torch.randn(4), torch.randn(2))
    with pytest.raises(ValueError, match="leading dimensions"):
        gate(torch.randn(2, 4), torch.randn(3, 2))
    with pytest.raises(ValueError, match="num_experts"):
        SoftGate(in_features=4, num_experts=0)
    with pytest.raises(ValueError, match="init_temperature"):
        SoftGate(in_features=4, num_experts=2, init_temperature=0.0)


# ---------------------------------------------------------------- NoisyTopKGate (SegMoTE Eq. 1-6)
def _noisy(k=2, st=False, n=3):
    gate = NoisyTopKGate(in_features=2, num_experts=n, k=k, straight_through=st)
    with torch.no_grad():
        gate.w_gate.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 2.0]])[:, :n])
        gate.w_noise.copy_(torch.tensor([[0.5, -1.0, 0.0], [0.0, 0.0, 1.0]])[:, :n])
    return gate


def test_noisy_topk_eval_is_clean_topk_softmax():
    gate = _noisy(k=2).eval()
    out = gate(torch.tensor([[1.0, 2.0]]))  # clean logits [1, 2, 4]
    assert out.indices.tolist() == [[2, 1]]
    want = softmax([4.0, 2.0])
    assert torch.allclose(out.weights, torch.tensor([[0.0, want[1], want[0]]]), atol=1e-6)
    assert torch.allclose(out.probs, torch.tensor([softmax([1.0, 2.0, 4.0])]), atol=1e-6)
    assert torch.equal(gate(torch.tensor([[1.0, 2.0]])).weights, out.weights)  # deterministic


def test_noisy_topk_training_noise_follows_eq2():
    gate = _noisy(k=1).train()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    torch.manual_seed(123)
    out = gate(x)
    torch.manual_seed(123)
    z = torch.randn(2, 3)
    clean = x @ gate.w_gate.detach()
    std = nn.functional.softplus(x @ gate.w_noise.detach()) + 0.01
    assert torch.allclose(out.logits, clean + z * std, atol=1e-6)
    assert torch.equal(out.indices[:, 0], (clean + z * std).argmax(-1))


def test_noisy_top1_without_straight_through_gives_router_no_gradient():
    gate = _noisy(k=1).eval()
    out = gate(torch.tensor([[1.0, 2.0], [0.5, -1.0]]))
    assert torch.all(out.weights.sum(-1) == 1)
    out.weights.sum().backward()
    assert gate.w_gate.grad.abs().sum() == 0  # softmax of one logit is constant


def test_noisy_top1_straight_through_gradient_is_softmax_gradient():
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    gate = _noisy(k=1, st=True).eval()
    out = gate(x)
    assert torch.allclose(out.weights.sum(-1), torch.ones(2))  # forward value unchanged
    out.weights.sum().backward()
    ref = _noisy(k=1).eval()
    p = (x @ ref.w_gate).softmax(-1)
    p.gather(-1, p.argmax(-1, keepdim=True)).sum().backward()
    assert gate.w_gate.grad.abs().sum() > 0
    assert torch.allclose(gate.w_gate.grad, ref.w_gate.grad, atol=1e-6)


@pytest.mark.parametrize("n,k", [(1, 1), (3, 3), (4, 1)])
def test_noisy_topk_edge_cases_are_finite(n, k):
    gate = NoisyTopKGate(in_features=5, num_experts=n, k=k)
    for mode in (gate.train(), gate.eval()):
        out = mode(torch.randn(1, 7, 5))  # batch of 1, 7 tokens
        assert out.weights.shape == (1, 7, n) and torch.isfinite(out.weights).all()
        assert torch.allclose(out.weights.sum(-1), torch.ones(1, 7))
        assert int((out.weights > 0).sum(-1).max()) <= k


def test_noisy_topk_bad_args():
    with pytest.raises(ValueError, match="k must be"):
        NoisyTopKGate(in_features=4, num_experts=2, k=3)
    gate = NoisyTopKGate(in_features=4, num_experts=2)
    with pytest.raises(ValueError, match="width"):
        gate(torch.randn(2, 5))
    with pytest.raises(ValueError, match="rank"):
        gate(torch.randn(4))


# ---------------------------------------------------------------- HardRouter (MedMoE Sec. 4.3)
def test_hard_router_one_hot_and_aux_loss_by_hand():
    router = HardRouter(in_features=2, num_experts=3, hidden=2)
    with torch.no_grad():
        router.mlp[0].weight.copy_(torch.eye(2))
        router.mlp[0].bias.zero_()
        router.mlp[2].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
        router.mlp[2].bias.zero_()
    x = torch.tensor([[2.0, 1.0], [0.0, 3.0], [-1.0, -1.0]])  # relu -> [2,1],[0,3],[0,0]
    out = router(x)
    assert out.indices[:, 0].tolist()[:2] == [0, 1]
    assert torch.equal(out.weights.sum(-1), torch.ones(3)) and set(out.weights.unique().tolist()) == {0.0, 1.0}
    labels = torch.tensor([0, 2, 1])
    logits = [[2.0, 1.0, 1.5], [0.0, 3.0, 1.5], [0.0, 0.0, 0.0]]
    want = statistics.mean(-math.log(softmax(row)[y]) for row, y in zip(logits, labels.tolist()))
    assert math.isclose(HardRouter.aux_loss(out, labels).item(), want, rel_tol=1e-6)


def test_hard_router_learns_only_from_aux_loss():
    torch.manual_seed(0)
    router = HardRouter(in_features=4, num_experts=3, hidden=8)
    experts = nn.ModuleList(nn.Linear(4, 2) for _ in range(3))
    x = torch.randn(6, 4)
    out = router(x)
    y, counts = dispatch_combine(x, experts, out.indices, out.weights)
    y.pow(2).sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in router.parameters())
    for e, c in enumerate(counts.tolist()):  # experts that received nothing get no gradient
        g = experts[e].weight.grad
        assert (g is not None and g.abs().sum() > 0) == (c > 0)
    HardRouter.aux_loss(router(x), torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    assert router.mlp[0].weight.grad.abs().sum() > 0


def test_hard_router_bad_input():
    router = HardRouter(in_features=4, num_experts=2)
    with pytest.raises(ValueError, match="rank 2"):
        router(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="width 4"):
        router(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        HardRouter.aux_loss(router(torch.randn(2, 4)), torch.tensor([0, 2]))


# ---------------------------------------------------------------- dispatch / combine
class CountingExpert(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale, self.rows = scale, []

    def forward(self, a, b=None):
        self.rows.append(a.shape[0])
        return a * self.scale + (0 if b is None else b)


def test_plan_dispatch_groups_without_one_hot():
    plan = plan_dispatch(torch.tensor([[2, 0], [0, 1], [2, 1]]), 4)
    assert plan.counts.tolist() == [2, 2, 2, 0]
    assert [t.tolist() for t in plan.split()] == [[0, 1], [1, 2], [0, 2], []]
    assert plan.slot.tolist() == [1, 0, 1, 1, 0, 0]


def test_dispatch_combine_equals_dense_mixture_and_skips_idle_experts():
    experts = [CountingExpert(s) for s in (1.0, 10.0, 100.0)]
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    idx = torch.tensor([[0, 2], [2, 0], [0, 2], [2, 0]])
    w = torch.tensor([[0.7, 0.0, 0.3], [0.4, 0.0, 0.6], [1.0, 0.0, 0.0], [0.5, 0.0, 0.5]])
    y, counts = dispatch_combine(x, experts, idx, w)
    dense = sum(w[:, i : i + 1] * (x * s) for i, s in enumerate((1.0, 10.0, 100.0)))
    assert torch.allclose(y, dense)
    assert counts.tolist() == [4, 0, 4]
    assert experts[1].rows == [] and experts[0].rows == [4]


def test_dispatch_combine_multi_input_top1_and_weight_gradient():
    experts = [CountingExpert(2.0), CountingExpert(3.0)]
    a = torch.tensor([[1.0], [2.0], [3.0]])
    b = torch.tensor([[10.0], [20.0], [30.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 0.5], [1.0, 0.0]], requires_grad=True)
    y, counts = dispatch_combine((a, b), experts, torch.tensor([0, 1, 0]), w)
    assert y[:, 0].tolist() == [12.0, 0.5 * 26.0, 36.0] and counts.tolist() == [2, 1]
    y.sum().backward()
    assert w.grad[1, 1] == 26.0 and w.grad[0, 1] == 0.0


def test_dispatch_combine_bad_input():
    experts = [nn.Linear(2, 2)] * 2
    with pytest.raises(ValueError, match="rows"):
        dispatch_combine(torch.randn(3, 2), experts, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        dispatch_combine(torch.randn(2, 2), experts, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="weights must have shape"):
        dispatch_combine(torch.randn(2, 2), experts, torch.tensor([0, 1]), torch.ones(2, 3))


# ---------------------------------------------------------------- losses
def test_diversity_loss_by_hand():
    assert math.isclose(diversity_loss(torch.eye(2)).item(), -math.log(2), rel_tol=1e-6)
    assert abs(diversity_loss(torch.full((3, 4), 0.25)).item()) < 1e-6
    assert abs(diversity_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item()) < 1e-6
    g = [[0.9, 0.1], [0.3, 0.7]]
    want = statistics.mean(H(r) for r in g) - H([0.6, 0.4])
    assert math.isclose(diversity_loss(torch.tensor(g)).item(), want, rel_tol=1e-5)


def test_diversity_loss_gradient_pushes_towards_confident_diverse_gates():
    logits = torch.tensor([[0.2, 0.0], [0.1, 0.0]], requires_grad=True)
    diversity_loss(logits.softmax(-1)).backward()
    # the sample leaning to expert 0 less should be pushed towards expert 1
    assert logits.grad[1, 0] > logits.grad[0, 0]


def test_cv_squared_by_hand():
    assert math.isclose(cv_squared(torch.tensor([1.0, 2.0, 3.0, 4.0])).item(), (5 / 3) / 6.25, rel_tol=1e-6)
    assert cv_squared(torch.tensor([5.0])).item() == 0.0
    assert cv_squared(torch.zeros(4)).item() == 0.0
    with pytest.raises(ValueError, match="rank 1"):
        cv_squared(torch.ones(2, 2))


def test_importance_load_sums_over_batch_and_tokens():
    w = torch.tensor(
        [[[0.9, 0.0, 0.0], [0.0, 0.6, 0.0]],
         [[0.8, 0.0, 0.0], [0.7, 0.0, 0.0]]]
    )  # (B=2, T=2, N=3); expert 2 receives nothing
    t = importance_load_loss(w)
    assert torch.allclose(t.importance, torch.tensor([2.4, 0.6, 0.0]))
    assert t.load.tolist() == [3.0, 1.0, 0.0]

    def cv2(xs):
        return statistics.variance(xs) / statistics.mean(xs) ** 2

    assert math.isclose(t.loss.item(), cv2([2.4, 0.6, 0.0]) + cv2([3.0, 1.0, 0.0]), rel_tol=1e-5)


def test_importance_load_gradient_only_through_importance():
    w = torch.tensor([[0.9, 0.0], [0.0, 0.3]], requires_grad=True)
    importance_load_loss(w).loss.backward()
    assert w.grad.abs().sum() > 0
    balanced = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert importance_load_loss(balanced).loss.item() == 0.0


def test_switch_balance_loss_by_hand():
    p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6]])
    got = switch_balance_loss(p, torch.tensor([[0], [0], [1]]))
    assert math.isclose(got.item(), 2 * (2 / 3 * 0.7 + 1 / 3 * 0.3), rel_tol=1e-6)
    one = switch_balance_loss(torch.tensor([[1.0, 0.0]] * 4), torch.zeros(4, dtype=torch.long))
    assert math.isclose(one.item(), 2.0)


def test_router_z_loss_by_hand():
    got = router_z_loss(torch.tensor([[0.0, 0.0], [1.0, 2.0]]))
    want = (math.log(2) ** 2 + math.log(math.e + math.e**2) ** 2) / 2
    assert math.isclose(got.item(), want, rel_tol=1e-6)


# ---------------------------------------------------------------- statistics
def test_expert_load_and_entropy():
    assert expert_load(torch.tensor([[0], [0], [2]]), 4, normalize=False).tolist() == [2, 0, 1, 0]
    assert math.isclose(gate_entropy(torch.full((5, 4), 0.25)).item(), math.log(4))
    assert math.isclose(gate_entropy(torch.full((5, 4), 0.25), normalize=True).item(), 1.0)
    assert gate_entropy(torch.tensor([[1.0, 0.0]])).item() == 0.0
    with pytest.raises(ValueError, match="lie in"):
        expert_load(torch.tensor([3]), 3)


def test_mutual_information_by_hand():
    a, b = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1])
    want = 0.5 * math.log(0.5 / 0.375) + 0.25 * math.log(0.25 / 0.375) + 0.25 * math.log(0.25 / 0.125)
    assert math.isclose(mutual_information(a, b).item(), want, rel_tol=1e-9)
    assert abs(mutual_information(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])).item()) < 1e-12
    assert math.isclose(
        normalized_mutual_information(torch.tensor([2, 2, 0, 0]), torch.tensor([1, 1, 0, 0])).item(), 1.0
    )
    assert math.isclose(normalized_mutual_information(a, b).item(), want / math.log(2), rel_tol=1e-9)
    assert normalized_mutual_information(a, torch.zeros(4, dtype=torch.long)).item() == 0.0
    with pytest.raises(ValueError, match="same inputs"):
        mutual_information(a, torch.tensor([0, 1]))


@pytest.mark.parametrize("name", ["gates", "dispatch", "losses", "stats"])
def test_docstring_examples(name):
    mod = importlib.import_module(f"medmoe.moe.{name}")
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS, extraglobs={"torch": torch})
    assert res.attempted > 0 and res.failed == 0


def test_dispatch_combine_with_experts_returning_tuples():
    """Experts that return several tensors (MedMoE: fused features and scale weights) are combined element-wise."""
    torch.manual_seed(0)
    lin = [torch.nn.Linear(4, 3) for _ in range(2)]
    experts = [lambda x, f=f: (f(x), x.sum(-1, keepdim=True)) for f in lin]
    x = torch.randn(5, 4)
    idx = torch.tensor([[1], [0], [1], [1], [0]])
    (y, s), counts = dispatch_combine(x, experts, idx)
    assert counts.tolist() == [2, 3]
    for i in range(5):
        assert torch.allclose(y[i], lin[int(idx[i])](x[i]))
        assert torch.allclose(s[i], x[i].sum(-1, keepdim=True))
    w = torch.tensor([[0.0, 2.0], [0.5, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    (yw, sw), _ = dispatch_combine(x, experts, idx, w)
    assert torch.allclose(sw[0], 2.0 * s[0]) and torch.allclose(yw[1], 0.5 * y[1])
