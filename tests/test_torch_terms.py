"""term_grads against PyTorch's seed-002 answer: autograd.grad(term, params, retain_graph=True)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgrad.losses.pde import laplacian
from jaxgrad.losses.terms import term_grads
from jaxgrad.models.mlp import MLP

STANDARD_PROMOTION = (
    "jaxgrad.models.mlp standardises [N, d] points with a [d] mean and std (rank promotion)"
)

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[torch]'")


def test_per_term_grads_match_torch_retain_graph_loop(key):
    k_init, k_x, k_y = jax.random.split(key, 3)
    graphdef, params = nnx.split(MLP((2, 6, 6, 1), rngs=nnx.Rngs(params=k_init)), nnx.Param)
    x_res = jax.random.uniform(k_x, (10, 2), minval=-1.0, maxval=1.0)
    x_bc = jax.random.uniform(k_y, (12, 2), minval=-1.0, maxval=1.0)
    g_bc = jnp.sin(x_bc[:, 0])

    def terms(p):
        m = nnx.merge(graphdef, p)
        u = lambda q: m(q[None])[0, 0]
        return {
            "res": jnp.mean((laplacian(u, x_res) + 1.0) ** 2),
            "bc": jnp.mean((m(x_bc)[:, 0] - g_bc) ** 2),
        }

    grads = jax.jit(term_grads, static_argnums=0)(terms, params)

    layers = [params["linears"][i] for i in sorted(params["linears"])]
    ws = [
        (
            torch.tensor(np.asarray(lin["kernel"]), requires_grad=True),
            torch.tensor(np.asarray(lin["bias"]), requires_grad=True),
        )
        for lin in layers
    ]
    leaves = [t for pair in ws for t in pair]

    def net(h):
        for w, b in ws[:-1]:
            h = torch.tanh(h @ w + b)
        return h @ ws[-1][0] + ws[-1][1]

    xr = torch.tensor(np.asarray(x_res), requires_grad=True)
    u = net(xr)[:, 0]
    (du,) = torch.autograd.grad(u.sum(), xr, create_graph=True)
    lap = sum(torch.autograd.grad(du[:, d].sum(), xr, create_graph=True)[0][:, d] for d in (0, 1))
    loss_res = ((lap + 1.0) ** 2).mean()
    loss_bc = (
        (net(torch.tensor(np.asarray(x_bc)))[:, 0] - torch.tensor(np.asarray(g_bc))) ** 2
    ).mean()
    torch_grads = {
        "res": torch.autograd.grad(loss_res, leaves, retain_graph=True, allow_unused=True),
        "bc": torch.autograd.grad(loss_bc, leaves),
    }
    for name, tg in torch_grads.items():
        for i, lin in enumerate(sorted(params["linears"])):
            jg = grads[name]["linears"][lin]
            for j, leaf in enumerate(("kernel", "bias")):
                t = tg[2 * i + j]
                want = np.zeros(jg[leaf].shape) if t is None else t.numpy()
                np.testing.assert_allclose(jg[leaf], want, rtol=2e-4, atol=1e-5)
