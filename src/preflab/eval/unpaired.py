"""`preflab eval` on unpaired rows (TRL's KTO form: prompt, completion, label): how well the implicit reward
separates the desirable completions from the undesirable ones.

    r_i = beta (log pi(y_i | x_i) - log pi_ref(y_i | x_i))          (summed over the completion's tokens)

    rewards/chosen    mean r over the desirable completions (label true); rewards/rejected over the undesirable
                      ones; rewards/margins = rewards/chosen - rewards/rejected (the names and means of TRL's
                      KTOTrainer metrics, where "chosen" is desirable)
    logps/chosen      mean log pi(y | x) over the desirable completions; logps/rejected over the undesirable
    unpaired/auroc    P(r_d > r_u) + 1/2 P(r_d = r_u) over every (desirable, undesirable) pair of completions: the
                      area under the ROC curve of r as a desirability score (Mann-Whitney U / (n_d n_u)); 0.5 is no
                      separation. It needs both labels.

No threshold-based accuracy: KTO compares rewards with its reference point z_ref (a KL estimate of the training
batch), not with 0, so "r > 0" would be a threshold the objective never used. Pair metrics (ranking accuracy, R*,
difficulty, dispersion) and the win rate need pairs and are listed under "missing". Without a reference there is no
implicit reward: only logps/* are given.
"""
from __future__ import annotations

import torch

from preflab.errors import PreflabError


def unpaired_metrics(policy_logps: torch.Tensor, labels: torch.Tensor, beta: float,
                     ref_logps: torch.Tensor | None = None) -> dict[str, float]:
    """The metrics of the module docstring from summed log-probs [N] and bool labels [N] (True: desirable)."""
    labels = labels.bool()
    out: dict[str, float] = {}
    for name, side in (("chosen", labels), ("rejected", ~labels)):
        if bool(side.any()):
            out[f"logps/{name}"] = float(policy_logps[side].double().mean())
    if ref_logps is None:
        return out
    rewards = beta * (policy_logps.double() - ref_logps.double())
    desirable, undesirable = rewards[labels], rewards[~labels]
    for name, values in (("chosen", desirable), ("rejected", undesirable)):
        if values.numel():
            out[f"rewards/{name}"] = float(values.mean())
    if desirable.numel() and undesirable.numel():
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        above = (desirable[:, None] > undesirable[None, :]).double()
        ties = (desirable[:, None] == undesirable[None, :]).double()
        out["unpaired/auroc"] = float((above + 0.5 * ties).mean())
    return out


def evaluate_unpaired(policy, tokenizer, examples, row_report, ref, beta: float, cuts: dict, batch_size: int,
                      pad_id: int, keep_per_row: bool) -> dict:
    """The eval.json dict of unpaired `examples` (preflab.data.rows UnpairedExample): metrics, counts, missing."""
    from preflab.data.tokenize import tokenize_indexed
    from preflab.eval.score import score_responses

    items, tok_report, _ = tokenize_indexed("unpaired", examples, tokenizer, on_bad_row="skip",
                                            source=row_report.source, **cuts)
    if not items:
        raise PreflabError(f"no usable completions in {row_report.source}: {row_report.summary()}; "
                           f"{tok_report.summary()}. Check the columns and --max-length.")
    seqs = [(t.prompt_ids, t.completion_ids) for t in items]
    labels = torch.tensor([bool(t.label) for t in items])
    policy_logps, lengths = score_responses(policy, seqs, pad_id, batch_size)
    ref_logps = score_responses(ref, seqs, pad_id, batch_size)[0] if ref is not None else None
    metrics = unpaired_metrics(policy_logps, labels, beta, ref_logps)
    n_desirable = int(labels.sum())
    notes, missing = [], {"pairs": "the data is unpaired (completion + label): ranking accuracy, R*, difficulty, "
                                   "dispersion and the win rate need preference pairs (prompt, chosen, rejected)"}
    if ref is None:
        missing["reference"] = "no --reference: the implicit reward (rewards/*, unpaired/auroc) needs the reference"
    elif n_desirable in (0, len(items)):
        missing["unpaired/auroc"] = (f"every one of the {len(items)} completions is "
                                     f"{'desirable' if n_desirable else 'undesirable'}: the AUROC and the margin "
                                     "need both labels")
    if row_report.skipped or tok_report.skipped or tok_report.prompt_truncated or tok_report.response_truncated:
        notes.append(f"data: {row_report.summary()}; {tok_report.summary()} (listed under data_report in "
                     "eval.json); the metrics cover the completions kept")
    out = {"num_pairs": 0, "num_completions": len(items), "num_desirable": n_desirable, "beta": beta,
           "truncation": cuts, "metrics": metrics, "notes": notes, "missing": missing,
           "data_report": {"rows": row_report.to_dict(), "tokenize": tok_report.to_dict()}}
    if keep_per_row:
        out["per_completion"] = {"row_id": [t.row_id for t in items], "label": labels.tolist(),
                                 "policy_logps": policy_logps.tolist(), "length": lengths.tolist(),
                                 **({"ref_logps": ref_logps.tolist()} if ref_logps is not None else {})}
    return out
