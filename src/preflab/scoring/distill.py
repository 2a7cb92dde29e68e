"""The per-token generalized JSD between a student and a teacher at the completion positions, chunk by chunk: the
full next-token distributions over the vocabulary are needed (not only the targets' log-probs), so each chunk of C
positions builds the two [C, V] float32 logits from the gathered hidden states, reduces them to [C] divergences
(preflab.objectives._distill_task.token_generalized_jsd) and drops them; with several chunks under autograd each chunk
is recomputed in backward (checkpoint), as preflab.scoring.lm.token_entropy, so no [B, T, V] tensor is ever built.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from preflab.data.layout import LayoutBatch
from preflab.errors import PreflabError
from preflab.objectives._distill_task import token_generalized_jsd
from preflab.scoring.chunking import chunk_budget_of, chunk_for_budget
from preflab.scoring.head import LMHead
from preflab.scoring.lm import Scores, _chunk_slices, _joined, _part, _scatter


def _jsd_chunk(h_s: Tensor, h_t: Tensor, student_head: LMHead, teacher_head: LMHead, beta: float) -> Tensor:
    return token_generalized_jsd(student_head(h_s), teacher_head(h_t), beta)


def token_divergence(student: Scores, teacher: Scores, layout: LayoutBatch, student_head: LMHead,
                     teacher_head: LMHead, beta: float, temperature: float = 1.0,
                     chunk_tokens: int | None = None) -> Tensor:
    """[N, L] D_beta at each completion position of `layout` (zeros off the mask), from the student's and the
    teacher's gathered hidden states (Scores.hidden_flat of the same layout) through their own LM heads, both
    divided by `temperature` (LMHead.tempered); differentiable in the student's hidden states."""
    h_s, h_t = student.hidden_flat, teacher.hidden_flat
    if h_s is None or h_t is None or h_s.shape[0] != h_t.shape[0]:
        raise PreflabError("distillation: the student's and the teacher's hidden states at the completion positions "
                           "are needed, from the same layout.")
    if student_head.weight.shape[0] != teacher_head.weight.shape[0]:
        raise PreflabError(f"distillation: the teacher's vocabulary ({teacher_head.weight.shape[0]} logits) differs "
                           f"from the student's ({student_head.weight.shape[0]}); the divergence compares "
                           "distributions over one vocabulary: use a teacher with the student's tokenizer.")
    s_head, t_head = student_head.tempered(temperature), teacher_head.tempered(temperature)
    chunk = chunk_tokens or chunk_for_budget(chunk_budget_of(s_head), s_head.weight.shape[0], 2)
    slices = _chunk_slices(h_s.shape[0], chunk, equal_windows=False)
    h_t = h_t.detach()
    recompute = torch.is_grad_enabled() and h_s.requires_grad and len(slices) > 1
    pieces = [checkpoint(_jsd_chunk, _part(h_s, sl), _part(h_t, sl), s_head, t_head, beta, use_reentrant=False)
              if recompute else _jsd_chunk(_part(h_s, sl), _part(h_t, sl), s_head, t_head, beta)
              for sl, _ in slices]
    values = _joined(pieces) if pieces else h_s.new_zeros(0)
    return _scatter(values, layout.gather_plan().slot, student.mask.shape)
