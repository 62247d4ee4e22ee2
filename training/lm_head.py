"""The loss's projection onto the vocabulary, made fast on CPU.

SFTTrainer computes the loss through TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``): per-token
log-probabilities in vocabulary tiles, never holding the ``tokens x vocab`` logits. On a GPU that is a Triton kernel
over the loss-carrying positions only. Without Triton (CPU) it scores every position, loss-carrying or not, and folds
each tile with a chain of unfused torch ops, recomputing the projection in the backward pass: on the 135M model that
is about a quarter of a LoRA step (``python tools/benchmark.py --profile default --lm_head chunked``).

``use_full_lm_head`` swaps in the plain computation for that case: project only the positions whose label is not
-100, one ``log_softmax`` over the vocabulary, gather the labels' log-probabilities. Same outputs (log-probabilities,
entropy and top-1 flags for SFTTrainer's metrics, the mask, the loss; tests/test_training.py compares them with TRL's
kernel, gradients included), at the price of holding those positions' logits: loss tokens x vocabulary x 4 bytes
(4 x 512 tokens of SmolLM2: about 0.3 GB). Forwards without ``fused_lm_head=True`` (generation, evaluation scripts)
are untouched, and anything the plain path does not cover (pre-shifted labels, MoE router losses, logit scaling)
falls through to TRL's head.
"""

from __future__ import annotations

import types

import torch

UNSUPPORTED_SCALING = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def resolve_lm_head(choice: str, device: str, checkpointing: bool) -> str:
    """``full`` or ``chunked`` for a config's ``lm_head`` (auto: full on CPU unless activation checkpointing is on,
    i.e. unless the run saves memory first; chunked on GPU, where TRL's kernel is the fast path)."""
    if choice != "auto":
        return choice
    return "full" if device == "cpu" and not checkpointing else "chunked"


def supports_full_lm_head(model) -> bool:
    config = model.config.get_text_config()
    return not any(getattr(config, name, None) is not None for name in UNSUPPORTED_SCALING)


def use_full_lm_head(model) -> bool:
    """Patch ``model`` (the causal LM itself, inside any PEFT wrapper) after TRL's ``add_fused_lm_head`` (which
    SFTTrainer applies when it is built). Returns False, leaving TRL's head, for a model whose logits it does not cover."""
    from trl.trainer.utils import FusedCausalLMOutput

    if not supports_full_lm_head(model):
        return False
    fused_forward = model.forward
    config = model.config.get_text_config()
    softcap = getattr(config, "final_logit_softcapping", None)

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or labels is None or shift_labels is not None or kwargs.get("output_router_logits") or getattr(config, "output_router_logits", False):
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        targets = labels[mask]
        logits = self.get_output_embeddings()(hidden[mask]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        log_probs_all = torch.log_softmax(logits, dim=-1)
        del logits
        picked = log_probs_all.gather(1, targets.unsqueeze(1)).squeeze(1)
        with torch.no_grad():  # SFTTrainer's metrics; chunked so that no second tokens x vocab buffer is needed
            entropy = torch.cat([-(c.exp() * c).sum(-1) for c in log_probs_all.split(256)]) if targets.numel() else picked.new_zeros(0)
            is_top1 = log_probs_all.argmax(-1) == targets  # the first maximum, as TRL counts a tie

        def spread(x):
            return x.new_zeros(mask.shape).masked_scatter(mask, x)

        log_probs = spread(picked)
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=spread(entropy), is_top1=spread(is_top1), label_mask=mask)

    model.forward = types.MethodType(forward, model)
    return True
