"""PyTorch parity: the seed's loss, CLIP's symmetric loss and SigLIP, values and gradients.

The torch side is written the way the seed and open_clip write it (``CrossEntropyLoss`` on
``image_features @ text_features.T`` with ``arange`` labels); ``loss.backward()`` gives the
``.grad`` of both feature matrices and of ``logit_scale``, compared with ``jax.grad``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrad.losses.contrastive import clip_loss, seed_contrastive_loss, siglip_loss

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[torch]'")
F = torch.nn.functional

B, D = 6, 5


def _torch_loss(which, img, txt, scale, bias):
    labels = torch.arange(img.shape[0])
    if which == "seed":
        logits = img @ txt.T  # the seed, verbatim: no normalisation, no temperature
        return torch.nn.CrossEntropyLoss()(logits, labels)
    if which == "clip":  # open_clip's ClipLoss
        logits = scale.exp() * img @ txt.T
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    logits = scale.exp() * img @ txt.T + bias  # big_vision / open_clip SigLipLoss
    z = 2 * torch.eye(img.shape[0]) - 1
    return -F.logsigmoid(z * logits).sum() / img.shape[0]


def _jax_loss(which, img, txt, scale, bias):
    if which == "seed":
        return seed_contrastive_loss(image_features=img, text_features=txt)[0]
    if which == "clip":
        return clip_loss(image_features=img, text_features=txt, logit_scale=scale)[0]
    return siglip_loss(image_features=img, text_features=txt, logit_scale=scale, logit_bias=bias)[0]


@pytest.mark.parametrize("which", ["seed", "clip", "siglip"])
def test_loss_and_gradients_match_torch(which):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((B, D)).astype(np.float32)
    txt = rng.standard_normal((B, D)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    scale, bias = np.float32(np.log(1 / 0.07)), np.float32(-10.0)

    t_args = [torch.tensor(a, requires_grad=True) for a in (img, txt, scale, bias)]
    t_loss = _torch_loss(which, *t_args)
    t_loss.backward()
    t_grads = [a.grad for a in t_args[:3]]

    j_args = [jnp.asarray(a) for a in (img, txt, scale, bias)]
    j_loss, j_grads = jax.value_and_grad(
        lambda i, t, s: _jax_loss(which, i, t, s, j_args[3]), argnums=(0, 1, 2)
    )(*j_args[:3])

    np.testing.assert_allclose(j_loss, t_loss.item(), rtol=1e-5)
    for name, g_jax, g_torch in zip(("image", "text", "logit_scale"), j_grads, t_grads):
        if g_torch is None:  # the seed's loss does not use logit_scale
            assert which == "seed" and float(g_jax) == 0.0, name
            continue
        np.testing.assert_allclose(g_jax, g_torch.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


def test_detach_matches_stop_gradient():
    # the seed's image_features.detach(): torch leaves .grad None, JAX gives exact zeros
    rng = np.random.default_rng(1)
    img = rng.standard_normal((B, D)).astype(np.float32)
    txt = rng.standard_normal((B, D)).astype(np.float32)
    ti, tt = torch.tensor(img, requires_grad=True), torch.tensor(txt, requires_grad=True)
    _torch_loss("seed", ti.detach(), tt, None, None).backward()
    assert ti.grad is None

    def detached(i, t):
        i = jax.lax.stop_gradient(i)
        return seed_contrastive_loss(image_features=i, text_features=t)[0]

    gi, gt = jax.grad(detached, argnums=(0, 1))(jnp.asarray(img), jnp.asarray(txt))
    np.testing.assert_array_equal(gi, 0.0)
    np.testing.assert_allclose(gt, tt.grad.numpy(), rtol=1e-4, atol=1e-6)
