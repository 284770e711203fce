"""The PyTorch anchor for ``experiments.bench_pinn``: the Helmholtz PINN step in PyTorch.

torch is imported inside :func:`make_torch_step`, so importing this module never needs torch.
The same problem as ``experiments.pinn_helmholtz`` (tanh MLP 2-50-50-50-1, Xavier-normal init,
inputs standardised, 128 points per edge and 128 residual points drawn fresh each step, Adam)
written the way PyTorch PINN code is::

    x.requires_grad_(True); u = net(x)
    u_x, u_y = autograd.grad(u.sum(), x, create_graph=True)[0].unbind(1)
    u_xx = autograd.grad(u_x.sum(), x, create_graph=True)[0][:, 0]   # and u_yy likewise
    loss = mean((u_xx + u_yy + λu - f)²) + λ_bc · Σ_edges mean((u_bc - g)²)
    grads = autograd.grad(loss, params); opt.step()

``annealed``: every ``period`` steps, one ``autograd.grad(term, weights, retain_graph=True)``
per term on the weight matrices, λ̂ = max|∂L_r/∂W| / mean|∂L_bc/∂W| (mean over matrices of the
mean |·|), λ_bc ← 0.9·λ_bc + 0.1·λ̂.

``compile``: ``torch.compile`` of the loss + gradients function (the optimizer stays eager),
written with ``torch.func``: the Laplacian's Hessian diagonal is ``vmap(jacrev(grad(u)))``
(reverse over reverse: the same double backward), the parameter gradients
``torch.func.grad``. torch.compile cannot compile the ``autograd.grad(create_graph=True)``
form: AOTAutograd's compiled graphs are first-order, so the second ``autograd.grad`` finds
its input unconnected ("appears to not have been used in the graph"); compiling the whole
step fails there too, and ``torch._dynamo.config.trace_autograd_ops`` compiles a step that
never updates the parameters (shared/guide/anchors.md). The eager variant keeps
``autograd.grad`` (its ``torch.func`` form is ~7x slower eagerly: vmap overhead).
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["TORCH_PINN_VARIANTS", "make_torch_step"]

TORCH_PINN_VARIANTS = ("eager", "compile")


def make_torch_step(
    variant: str,
    *,
    annealed: bool,
    width: int = 50,
    depth: int = 3,
    batch: int = 128,
    a1: float = 1.0,
    a2: float = 4.0,
    lam: float = 1.0,
    period: int = 10,
    threads: int = 1,
    seed: int = 0,
) -> Callable[[], float]:
    """A no-argument ``step()`` running one PINN training step; returns λ_bc (a float)."""
    import torch

    if variant not in TORCH_PINN_VARIANTS:
        raise ValueError(f"variant must be one of {TORCH_PINN_VARIANTS}, got {variant!r}")
    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    sizes = (2,) + (width,) * depth + (1,)
    weights = [
        (torch.randn(a, b, generator=gen) * math.sqrt(2 / (a + b))).requires_grad_()
        for a, b in zip(sizes[:-1], sizes[1:])
    ]
    biases = [torch.zeros(b, requires_grad=True) for b in sizes[1:]]
    params = weights + biases
    opt = torch.optim.Adam(params, lr=1e-3)
    std = 1 / math.sqrt(3)
    k2 = (a1 * math.pi) ** 2 + (a2 * math.pi) ** 2

    def net(x, ws, bs):
        h = x / std
        for w, b in zip(ws[:-1], bs[:-1]):
            h = torch.tanh(h @ w + b)
        return (h @ ws[-1] + bs[-1])[:, 0]

    def exact(x):
        return torch.sin(a1 * math.pi * x[:, 0]) * torch.sin(a2 * math.pi * x[:, 1])

    def terms(ws, bs, x, x_bc):  # x: the residual points, requires_grad (set outside compile)
        u = net(x, ws, bs)
        du = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
        u_xx = torch.autograd.grad(du[:, 0].sum(), x, create_graph=True)[0][:, 0]
        u_yy = torch.autograd.grad(du[:, 1].sum(), x, create_graph=True)[0][:, 1]
        f = (lam - k2) * exact(x.detach())
        res = torch.mean((u_xx + u_yy + lam * u - f) ** 2)
        u_bc = net(x_bc.reshape(-1, 2), ws, bs).reshape(4, -1)
        bc = torch.sum(torch.mean((u_bc - exact(x_bc.reshape(-1, 2)).reshape(4, -1)) ** 2, 1))
        return res, bc

    def loss_and_grads(ws, bs, x_res, x_bc, lam_bc):
        res, bc = terms(ws, bs, x_res, x_bc)
        loss = res + lam_bc * bc
        return loss, torch.autograd.grad(loss, ws + bs)

    def per_term(ws, bs, x_res, x_bc):
        res, bc = terms(ws, bs, x_res, x_bc)
        g_res = torch.autograd.grad(res, ws, retain_graph=True)
        g_bc = torch.autograd.grad(bc, ws)
        return g_res, g_bc

    if variant == "compile":
        from torch.func import grad, jacrev, vmap

        def func_terms(ws, bs, x, x_bc):
            hess = vmap(jacrev(grad(lambda p: net(p[None], ws, bs)[0])))(x)
            f = (lam - k2) * exact(x)
            res = torch.mean((hess[:, 0, 0] + hess[:, 1, 1] + lam * net(x, ws, bs) - f) ** 2)
            u_bc = net(x_bc.reshape(-1, 2), ws, bs).reshape(4, -1)
            bc = torch.sum(torch.mean((u_bc - exact(x_bc.reshape(-1, 2)).reshape(4, -1)) ** 2, 1))
            return res, bc

        def total(ws, bs, x, x_bc, lam_bc):
            res, bc = func_terms(ws, bs, x, x_bc)
            return res + lam_bc * bc

        def term(ws, x, x_bc, bs, i):
            return func_terms(ws, bs, x, x_bc)[i]

        def func_loss_and_grads(ws, bs, x, x_bc, lam_bc):
            g_w, g_b = grad(total, (0, 1))(ws, bs, x, x_bc, lam_bc)
            return None, list(g_w) + list(g_b)

        loss_and_grads = torch.compile(func_loss_and_grads)
        per_term = torch.compile(
            lambda ws, bs, x, x_bc: tuple(grad(term)(ws, x, x_bc, bs, i) for i in (0, 1))
        )

    def sample():
        x_res = torch.rand(batch, 2, generator=gen) * 2 - 1
        t = torch.rand(4, batch, generator=gen) * 2 - 1
        one = torch.ones(batch)
        x_bc = torch.stack(
            [
                torch.stack([t[0], -one], -1),
                torch.stack([one, t[1]], -1),
                torch.stack([t[2], one], -1),
                torch.stack([-one, t[3]], -1),
            ]
        )
        return x_res.requires_grad_(True), x_bc

    state = {"step": 0, "lam_bc": 1.0}

    def step() -> float:
        x_res, x_bc = sample()
        if variant == "compile":
            x_res = x_res.detach()
        lam_bc = torch.tensor(state["lam_bc"])  # a tensor: a float would recompile on change
        _, grads = loss_and_grads(weights, biases, x_res, x_bc, lam_bc)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        if annealed and state["step"] % period == 0:  # after the update, the authors' order
            g_res, g_bc = per_term(weights, biases, x_res, x_bc)
            top = max(float(g.detach().abs().max()) for g in g_res)
            mean = sum(float(g.detach().abs().mean()) for g in g_bc) / len(g_bc)
            # the authors differentiate the weighted term λ·L_bc (jaxgrad.losses.weighting.lr_annealing)
            state["lam_bc"] = 0.9 * state["lam_bc"] + 0.1 * top / (state["lam_bc"] * mean)
        state["step"] += 1
        return state["lam_bc"]

    return step
