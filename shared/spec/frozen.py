"""PAVE's frozen lower layers, computed once per text (DESIGN §4.4, issue 13).

With LoRA only on the top k of a model's L layers, the lower L-k layers hold no trainable
weight and see no LoRA: the hidden states entering layer L-k are the same at every DP-SGD
step and in every run on the same text. They are computed once, without gradients, and
kept per text (``LowerStates``); training then runs only the top layers, the final norm and
the LM head on them. The spec equals training the whole model (up to float rounding): under
the causal mask and right padding a text's states do not depend on the texts beside it.

Nothing here changes what is compared: the schema names the model (its weights' sha256),
the layers (``top_layers``) and the token window (``max_tokens``), and the kept states are
keyed by all three. They are derived from the caller's texts and never leave this process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.errors import SchemaMismatch

if TYPE_CHECKING:
    import torch

    from shared.models import LoadedModel

#: texts per no-grad pass of the lower layers (sorted by length, padding trimmed); 128
#: took half the CPU time of 32 on SmolLM2 at 16 tokens, and memory stays small
CHUNK = 256


def decoder_layers(model: Any) -> Any:
    """The model's stack of decoder layers (``model.layers`` of its decoder)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise SchemaMismatch(
            f"{type(model).__name__} has no decoder.layers: PAVE cannot freeze its lower layers"
        )
    return layers


def split_index(model: Any, top_layers: int | None) -> int | None:
    """The first trained layer when the recipe leaves lower layers frozen, else None."""
    total = int(model.config.num_hidden_layers)
    if top_layers is None or top_layers >= total:
        return None
    return total - top_layers


def skeleton_memo(model: Any, split: int) -> dict[int, Any]:
    """A ``copy.deepcopy`` memo that copies the model without its lower ``split`` layers,
    its token embedding and its LM head: each becomes a pass-through (no weights copied,
    module names unchanged, so the LoRA built on the copy is the whole model's, parameter
    for parameter). The copy's "logits" are then the final normed hidden states, which
    ``forward_top`` takes through the original head without holding all the logits."""
    if split == 0:
        return {}
    frozen = [*list(decoder_layers(model))[:split], model.get_input_embeddings()]
    frozen.append(model.get_output_embeddings())
    return {id(module): _pass_through() for module in frozen}


def forward_top(
    head: torch.Tensor,
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    inputs: Sequence[torch.Tensor],
) -> torch.Tensor:
    """The batch loss of the top layers on its kept states (``shared.dpsgd.Forward`` once
    ``head``, the frozen LM head's weight, is bound): the states enter as ``inputs_embeds``
    and cross the pass-through lower layers unchanged."""
    from shared.dpsgd import per_sample_head_loss

    (hidden,) = inputs
    hidden = hidden[:, : ids.shape[1]].to(ids.device)
    final = model(inputs_embeds=hidden, attention_mask=mask, use_cache=False).logits
    return per_sample_head_loss(final, head.to(final.device, final.dtype), ids, mask)


@dataclass
class LowerStates:
    """Hidden states at the input of the first trained layer, kept per text.

    One instance may serve many specs (``client.specs.SpecMaker`` keeps one): a text seen
    before costs nothing. Memory: tokens x hidden size x 4 bytes per text (~37 KB for
    SmolLM2 at 16 tokens); ``clear`` drops them.
    """

    _rows: dict[tuple[str, int, int, str], torch.Tensor] = field(default_factory=dict)

    def states(
        self,
        model: LoadedModel,
        texts: Sequence[str],
        ids: torch.Tensor,
        mask: torch.Tensor,
        split: int,
    ) -> torch.Tensor:
        """``[n, tokens, hidden]`` states of ``texts`` (tokenised as ``ids``/``mask``, padded
        on the right) entering layer ``split``; zero on padding."""
        import torch

        width = ids.shape[1]
        keys = [(model.ref.sha256, split, width, _text_key(t)) for t in texts]
        lengths = mask.sum(dim=1)
        todo = {i for i, key in enumerate(keys) if key not in self._rows}
        missing = sorted(todo, key=lambda i: int(lengths[i]))
        for start in range(0, len(missing), CHUNK):
            rows = missing[start : start + CHUNK]
            computed = _lower_pass(model.model, ids[rows], mask[rows], split)
            for i, state in zip(rows, computed, strict=True):
                self._rows[keys[i]] = state
        hidden = torch.zeros((len(texts), width, int(model.model.config.hidden_size)))
        for i, key in enumerate(keys):
            state = self._rows[key]
            hidden[i, : state.shape[0]] = state
        return hidden

    def clear(self) -> None:
        self._rows.clear()


def _pass_through() -> Any:
    """A module that stands in for a frozen lower layer in the training copy: it returns
    its input (torch imports here, lazily)."""
    import torch

    class PassThrough(torch.nn.Module):
        def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return hidden_states

    return PassThrough()


class _Reached(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by the hook on the first trained layer: the lower pass is done."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__("lower layers done")
        self.hidden = hidden


def _lower_pass(
    base: Any, ids: torch.Tensor, mask: torch.Tensor, split: int
) -> list[torch.Tensor]:
    """One no-grad pass of the layers below ``split``, stopped where layer ``split``
    starts (a pre-hook raises, so neither the top layers nor the LM head run)."""
    import torch

    def reached(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise _Reached(args[0] if args else kwargs["hidden_states"])

    lengths = [int(x) for x in mask.sum(dim=1)]
    width = max(lengths)
    device = next(base.parameters()).device
    handle = decoder_layers(base)[split].register_forward_pre_hook(reached, with_kwargs=True)
    try:
        with torch.no_grad():
            base(
                input_ids=ids[:, :width].to(device),
                attention_mask=mask[:, :width].to(device),
                use_cache=False,
            )
    except _Reached as done:
        hidden = done.hidden.detach().to("cpu", torch.float32)
    else:  # pragma: no cover - the hook always fires
        raise SchemaMismatch("the lower-layer pass never reached the first trained layer")
    finally:
        handle.remove()
    return [hidden[i, :n].clone() for i, n in enumerate(lengths)]


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
