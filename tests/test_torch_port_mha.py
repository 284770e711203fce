"""open_clip's attention layout: torch.nn.MultiheadAttention (fused in_proj) → an NNX attention
with separate q/k/v (jaxgrad.port.mha_rules, jaxgrad.models.mha), checked against torch."""

import numpy as np
import pytest
from flax import nnx

from jaxgrad.models.mha import MultiheadAttention
from jaxgrad.port import Rule, compare_layers, export, load_state_dict, mha_rules

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[torch]'")

STANDARD_PROMOTION = "flax NNX layers broadcast a [F] bias against [B, N, F] activations"

E, HEADS = 8, 2


class TorchBlock(torch.nn.Module):
    """open_clip's residual attention block, attention half: ``x + attn(ln(x))``."""

    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(E)
        self.attn = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)

    def forward(self, x):
        h = self.ln(x)
        return x + self.attn(h, h, h, need_weights=False)[0]


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([TorchBlock() for _ in range(2)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class Block(nnx.Module):
    def __init__(self, *, rngs):
        self.ln = nnx.LayerNorm(E, epsilon=1e-5, rngs=rngs)
        self.attn = MultiheadAttention(E, HEADS, rngs=rngs)

    def __call__(self, x):
        return x + self.attn(self.ln(x))


class Net(nnx.Module):
    def __init__(self, *, rngs):
        self.blocks = nnx.List([Block(rngs=rngs) for _ in range(2)])

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def port_rules():
    return [
        Rule("blocks.{i}.ln.weight", "blocks.{i}.ln.scale"),
        Rule("blocks.{i}.ln.bias", "blocks.{i}.ln.bias"),
        *mha_rules("blocks.{i}.attn", "blocks.{i}.attn"),
    ]


@pytest.fixture(scope="module")
def torch_net():
    torch.manual_seed(0)
    net = TorchNet()
    with torch.no_grad():  # non-zero biases (torch starts them at 0), so a misplaced one shows
        for p in net.parameters():
            if p.ndim == 1:
                p.normal_()
    return net


def _x(seed=0):
    return np.random.default_rng(seed).normal(size=(3, 5, E)).astype(np.float32)


def _ported(state_dict):
    return load_state_dict(Net(rngs=nnx.Rngs(1)), state_dict, port_rules())


def test_fused_in_proj_port_matches_torch_multihead_attention(torch_net):
    net = _ported(torch_net.state_dict())
    x = _x()
    with torch.no_grad():
        want = torch_net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(net(x)), want, atol=1e-5, rtol=1e-5)
    # cross-attention (key/value from another sequence) goes through the same split
    mha, ours = torch_net.blocks[0].attn, net.blocks[0].attn
    q, kv = _x(1), np.random.default_rng(2).normal(size=(3, 7, E)).astype(np.float32)
    with torch.no_grad():
        want = mha(torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(kv))[0].numpy()
    np.testing.assert_allclose(np.asarray(ours(q, kv)), want, atol=1e-5, rtol=1e-5)
    sd = export(net, port_rules())  # back to one fused tensor per attention, torch's numbers
    assert sorted(sd) == sorted(torch_net.state_dict())
    for k, v in torch_net.state_dict().items():
        np.testing.assert_array_equal(sd[k], v.numpy())


def test_compare_layers_passes_and_reports_fused_gradients_per_part(torch_net):
    report = compare_layers(
        torch_net, _ported(torch_net.state_dict()), [_x()], rules=port_rules(),
        torch_loss=lambda o: (o**2).sum(), nnx_loss=lambda o: (o**2).sum(), print_table=False,
    )  # fmt: skip
    assert report.first_bad is None and report.first_bad_param is None
    assert [r[0] for r in report.rows][:3] == ["blocks.0.ln", "blocks.0.attn", "blocks.0"]
    grads = {r[0]: r[1] for r in report.grad_rows}
    assert grads["blocks.1.attn.in_proj_weight[0:8]"] == "blocks.1.attn.q_proj.kernel"
    assert grads["blocks.1.attn.in_proj_weight[8:16]"] == "blocks.1.attn.k_proj.kernel"
    assert grads["blocks.1.attn.in_proj_bias[16:24]"] == "blocks.1.attn.v_proj.bias"


def test_compare_layers_names_the_attention_whose_q_and_k_are_swapped(torch_net):
    sd = {k: v.clone() for k, v in torch_net.state_dict().items()}
    w = sd["blocks.1.attn.in_proj_weight"]
    sd["blocks.1.attn.in_proj_weight"] = torch.cat([w[E : 2 * E], w[:E], w[2 * E :]])
    report = compare_layers(torch_net, _ported(sd), [_x()], rules=port_rules(), print_table=False)
    assert report.first_bad == "blocks.1.attn"
    ok = {r[0]: r[5] for r in report.rows}
    assert ok["blocks.0.attn"] is True and ok["blocks.1.ln"] is True
