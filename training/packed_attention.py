"""Attention for padding-free batches: each packed conversation attends to itself with a causal SDPA call.

A padding-free batch is one row of concatenated conversations whose ``position_ids`` restart at 0 for each of them.
transformers' own SDPA path makes that exact with a block-diagonal mask over the whole row, so it computes (and
differentiates) attention for every pair of tokens in the row, of which only the diagonal blocks survive, and it
cannot use the kernel's causal fast path. ``packed_sdpa`` runs SDPA once per conversation with ``is_causal=True``
instead: the same result (tests/test_training.py compares the two) with 1/k of the attention work for k conversations,
and none of the masked work. Anything that is not such a row (a padded batch, decoding with a cache) goes to the
library's SDPA unchanged.

Registered under the name ``packed_sdpa`` for both the attention and the mask interfaces, so
``from_pretrained(..., attn_implementation="packed_sdpa")`` works after ``import training.packed_attention``.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "packed_sdpa"


def segment_starts(position_ids: torch.Tensor | None, q_len: int, k_len: int) -> list[int] | None:
    """Start offsets of the packed conversations in a one-row batch without cache; None when it is not one."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1 or q_len != k_len or q_len < 2:
        return None
    pos = position_ids[0]
    if pos.shape[0] != q_len or int(pos[0]) != 0:
        return None
    starts = torch.nonzero(pos == 0).flatten().tolist()
    return starts if len(starts) > 1 else None


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, position_ids=None, **kwargs):
    starts = segment_starts(position_ids, query.shape[2], key.shape[2])
    if starts is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, position_ids=position_ids, **kwargs)
    kwargs.pop("is_causal", None)
    bounds = [*starts, query.shape[2]]
    outs = [
        sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, dropout=dropout, scaling=scaling, is_causal=True, **kwargs)[0]
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outs, dim=1), None  # sdpa_attention_forward returns (batch, seq, heads, dim)


AttentionInterface.register(NAME, packed_sdpa_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)

