"""The loss's projection onto the vocabulary, made fast (and lean) on CPU.

SFTTrainer computes the loss through TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``): per-token
log-probabilities in vocabulary tiles, never holding the ``tokens x vocab`` logits. On a GPU that is a Triton kernel
over the loss-carrying positions only. Without Triton (CPU) it scores every position, loss-carrying or not, folds each
``tokens x 32768`` tile with a chain of unfused torch ops (each a new tile-sized buffer), and recomputes the projection
in the backward pass: on the 135M model about 30% of a LoRA step, and several hundred MB of temporaries
(``python tools/benchmark.py --profile default --lm_head trl``).

``onepass`` is the head this module installs instead: only the positions whose label is not -100, a few hundred
tokens at a time; per chunk one projection, ``logsumexp``, the labels' log-probabilities, the entropy and top-1 flags
SFTTrainer logs, and, since the output layer is frozen under LoRA and each token's log-probability depends on its
own hidden state only, the gradient with respect to the hidden state, formed right there:
``d log p(y|h) / dh = (onehot(y) - softmax(z)) W`` (times the softcap's derivative where the model caps its logits).
The backward pass is then one multiply by the incoming gradient. Nothing of size ``tokens x vocab`` outlives a chunk.
tests/test_training.py compares outputs and LoRA gradients with TRL's kernel.

Anything it does not cover falls through to TRL's head: forwards without ``fused_lm_head=True`` (generation,
evaluation), pre-shifted labels, MoE router losses, logit scaling, and a trainable output layer.
"""

from __future__ import annotations

import types

import torch

UNSUPPORTED_SCALING = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
CHUNK_ELEMENTS = 1 << 25  # logits per chunk (128 MB in fp32): 682 tokens of a 49,152-word vocabulary


def resolve_lm_head(choice: str, device: str) -> str:
    """``onepass`` or ``trl`` for a config's ``lm_head`` (auto: onepass on CPU, TRL's Triton kernel on GPU)."""
    if choice != "auto":
        return choice
    return "onepass" if device == "cpu" else "trl"


class OnePassLogProbs(torch.autograd.Function):
    """Per-token log p(target | hidden) through a frozen output layer, with entropy and top-1 flags (no gradient)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap):
        compute = torch.get_autocast_dtype("cpu") if hidden.device.type == "cpu" and torch.is_autocast_enabled("cpu") else hidden.dtype
        w = weight.to(compute)
        n, vocab = hidden.shape[0], weight.shape[0]
        log_probs = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(log_probs)
        is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
        jac = torch.empty(n, hidden.shape[1], dtype=torch.float32, device=hidden.device) if ctx.needs_input_grad[0] else None
        step = max(1, CHUNK_ELEMENTS // vocab)
        for s in range(0, n, step):
            e = min(n, s + step)
            y = targets[s:e, None]
            z = (hidden[s:e].to(compute) @ w.t()).float()
            if softcap:
                capped = torch.tanh(z / softcap)
                z = capped * softcap
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            log_probs[s:e] = (z.gather(1, y) - lse)[:, 0]
            is_top1[s:e] = z.argmax(-1) == y[:, 0]  # the first maximum, as TRL counts a tie
            p = (z - lse).exp_()  # softmax
            entropy[s:e] = lse[:, 0] - torch.linalg.vecdot(p, z)
            del z
            if jac is not None:
                p.neg_().scatter_add_(1, y, torch.ones_like(y, dtype=p.dtype))  # onehot(y) - p
                if softcap:
                    p.mul_(1 - capped * capped)
                jac[s:e] = (p.to(compute) @ w).float()
        ctx.save_for_backward(jac)
        ctx.hidden_dtype = hidden.dtype
        ctx.mark_non_differentiable(entropy, is_top1)
        return log_probs, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_log_probs, _grad_entropy, _grad_top1):
        (jac,) = ctx.saved_tensors
        if jac is None or grad_log_probs is None:
            return None, None, None, None
        return (grad_log_probs.unsqueeze(1) * jac).to(ctx.hidden_dtype), None, None, None


def supports_onepass(model) -> bool:
    config = model.config.get_text_config()
    head = model.get_output_embeddings()
    return (head is not None and getattr(head, "bias", None) is None and not head.weight.requires_grad
            and not any(getattr(config, name, None) is not None for name in UNSUPPORTED_SCALING))


def use_onepass_lm_head(model) -> bool:
    """Patch ``model`` (the causal LM itself, inside any PEFT wrapper) after TRL's ``add_fused_lm_head`` (which
    SFTTrainer applies when it is built). Returns False, leaving TRL's head, for a model it does not cover."""
    from trl.trainer.utils import FusedCausalLMOutput

    if not supports_onepass(model):
        return False
    fused_forward = model.forward
    config = model.config.get_text_config()
    softcap = getattr(config, "final_logit_softcapping", None)

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if (not fused_lm_head or labels is None or shift_labels is not None or kwargs.get("output_router_logits")
                or getattr(config, "output_router_logits", False) or self.get_output_embeddings().weight.requires_grad):
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        picked, entropy, is_top1 = OnePassLogProbs.apply(hidden[mask], self.get_output_embeddings().weight, labels[mask], softcap)

        def spread(x):
            return x.new_zeros(mask.shape).masked_scatter(mask, x)

        log_probs = spread(picked)
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=spread(entropy), is_top1=spread(is_top1), label_mask=mask)

    model.forward = types.MethodType(forward, model)
    return True
