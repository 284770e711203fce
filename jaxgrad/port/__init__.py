"""Port a PyTorch model to flax NNX and prove the port equal, layer by layer.

Two pieces, generic over torch and NNX modules:

- :func:`convert` — a torch ``state_dict`` → the NNX params, by declarative :class:`Rule` s
  (a key template → a param path template, plus the layout change). Every unmapped key, every
  unfilled NNX param and every shape mismatch is reported together in one :class:`PortError`:
  never silent, never partial. :func:`export` runs the same rules backwards.
- :func:`compare_layers` — runs both models on the same inputs, captures every submodule's
  output (torch forward hooks; on the NNX side each submodule's ``__call__`` is intercepted),
  prints a table layer by layer (max abs / rel error) in execution order, names the first layer
  past tolerance, then compares the loss gradient parameter by parameter.

Rules, e.g. for a torch ``nn.Linear`` at ``blocks.3.fc`` held by an NNX ``blocks[3].fc``::

    Rule("blocks.{i}.fc.weight", "blocks.{i}.fc.kernel", "linear")  # [out, in] -> [in, out]
    Rule("blocks.{i}.fc.bias", "blocks.{i}.fc.bias")                 # copied

``{name}`` matches one integer (a ``ModuleList`` / ``nnx.List`` index). Layouts (``LAYOUTS``):
``"copy"`` (LayerNorm weight → scale, biases, ``nn.Embedding`` → ``nnx.Embed``), ``"linear"``
(transpose), ``"conv"`` (``[O, I, kh, kw]`` → ``[kh, kw, I, O]``), ``"reshape"`` (same numbers,
other singleton axes: cls tokens). A rule whose path is a tuple splits one fused torch tensor
into several params along axis 0 (and :func:`export` joins them): :func:`mha_rules` does it
for ``nn.MultiheadAttention``'s ``in_proj_weight`` / ``in_proj_bias`` (open_clip). jaxgrad
never imports torch at module level: functions that take torch modules import it inside.
"""

from jaxgrad.port.compare import LayerReport, compare_layers
from jaxgrad.port.rules import (
    LAYOUTS,
    PortError,
    Rule,
    convert,
    export,
    load_state_dict,
    mha_rules,
    param_paths,
    to_numpy,
)

__all__ = [
    "LAYOUTS",
    "LayerReport",
    "PortError",
    "Rule",
    "compare_layers",
    "convert",
    "export",
    "load_state_dict",
    "mha_rules",
    "param_paths",
    "to_numpy",
]
