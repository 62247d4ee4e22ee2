"""Attention for padding-free batches: each packed conversation attends only to itself, causally.

A padding-free batch is one row of concatenated conversations. TRL's collator gives its boundaries once per batch
(``cu_seq_lens_q``: cumulative lengths, ``max_length_q``: the longest), and ``position_ids`` restart at 0 for each
conversation. transformers' own SDPA path makes such a row exact with a block-diagonal mask over the whole row, so it
computes (and differentiates) attention for every pair of tokens in the row, of which only the diagonal blocks
survive. ``packed_sdpa`` instead:

- **on CUDA** (fp16/bf16), makes one variable-length FlashAttention call per layer (``torch.nn.attention.varlen``)
  over the whole row, with the collator's boundaries as they are: no per-layer host sync, no mask;
- **elsewhere** (the CPU), runs SDPA once per conversation with ``is_causal=True``: 1/k of the attention work for k
  conversations; reading the boundaries is free on the CPU.

Both give the result of each conversation run alone (``tests/test_training.py`` compares logits and LoRA gradients;
tests marked ``gpu`` run the CUDA kernel). Anything that is not such a row (a padded batch, decoding with a cache)
goes to the library's SDPA unchanged.

Registered under the name ``packed_sdpa`` for both the attention and the mask interfaces, so
``from_pretrained(..., attn_implementation="packed_sdpa")`` works after ``import training.packed_attention``.
"""

from __future__ import annotations

import inspect

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "packed_sdpa"

try:  # torch >= 2.9; its keyword arguments changed between releases, so they are read from the signature
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn

    _VARLEN_PARAMS = set(inspect.signature(_varlen_attn).parameters)
except ImportError:  # pragma: no cover - older torch
    _varlen_attn, _VARLEN_PARAMS = None, set()


def varlen_available(query: torch.Tensor) -> bool:
    """Whether ``query`` can take the one-kernel variable-length path (CUDA, half precision, torch's varlen)."""
    return _varlen_attn is not None and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)


def segment_starts(position_ids: torch.Tensor | None, q_len: int, k_len: int) -> list[int] | None:
    """Start offsets of the packed conversations in a one-row batch without cache; None when it is not one."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1 or q_len != k_len or q_len < 2:
        return None
    pos = position_ids[0]
    if pos.shape[0] != q_len or int(pos[0]) != 0:
        return None
    starts = torch.nonzero(pos == 0).flatten().tolist()
    return starts if len(starts) > 1 else None


def varlen_forward(query, key, value, cu_seq_lens: torch.Tensor, max_length: int, scaling=None) -> torch.Tensor:
    """One causal variable-length attention call over a packed row: ``query`` (1, heads, tokens, dim) and key/value
    with as many or fewer (grouped) heads; returns (1, tokens, heads, dim), as the library's attention functions do."""
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    extra = {}
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in _VARLEN_PARAMS:
            extra["enable_gqa"] = True
        else:  # the kernel wants as many key/value heads as query heads
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    # causal attention: window_size=(-1, 0) in current torch, is_causal=True in earlier releases
    causal = {"window_size": (-1, 0)} if "window_size" in _VARLEN_PARAMS or "is_causal" not in _VARLEN_PARAMS else {"is_causal": True}
    cu = cu_seq_lens.to(device=q.device, dtype=torch.int32)
    out = _varlen_attn(q, k, v, cu, cu, int(max_length), int(max_length), scale=scaling, **causal, **extra)
    return out.unsqueeze(0)


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, position_ids=None,
                        cu_seq_lens_q=None, max_length_q=None, **kwargs):
    for name in ("cu_seq_lens_k", "max_length_k", "seq_idx"):  # the collator's, read through cu_seq_lens_q and max_length_q
        kwargs.pop(name, None)
    one_row = query.shape[0] == 1 and query.shape[2] == key.shape[2] > 1
    if one_row and cu_seq_lens_q is not None and max_length_q is not None and dropout == 0.0 and varlen_available(query):
        return varlen_forward(query, key, value, cu_seq_lens_q, max_length_q, scaling), None
    if one_row and cu_seq_lens_q is not None and not cu_seq_lens_q.is_cuda and cu_seq_lens_q.numel() > 2:
        bounds = cu_seq_lens_q.tolist()
    else:
        starts = segment_starts(position_ids, query.shape[2], key.shape[2])
        if starts is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, position_ids=position_ids, **kwargs)
        bounds = [*starts, query.shape[2]]
    kwargs.pop("is_causal", None)
    outs = [
        sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, dropout=dropout, scaling=scaling, is_causal=True, **kwargs)[0]
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outs, dim=1), None  # sdpa_attention_forward returns (batch, seq, heads, dim)


AttentionInterface.register(NAME, packed_sdpa_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)
