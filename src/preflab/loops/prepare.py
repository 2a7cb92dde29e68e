"""Rows -> validated examples -> tokenized pairs for training and evaluation, with the data report."""
from __future__ import annotations

import torch

from preflab.errors import PreflabError


def _tokenize(rows, tokenizer, cfg, source):
    from preflab.data.tokenize import tokenize_pairs

    return tokenize_pairs(rows, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                          truncation_mode=cfg.truncation_mode, on_bad_row=cfg.on_bad_row, source=source)


def prepare_pairs(cfg, tokenizer):
    """(train pairs, eval pairs, report dict). The eval split is the eval dataset, or a seeded eval_fraction."""
    from preflab.data.rows import load_rows

    if not cfg.dataset_name:
        raise PreflabError("dataset_name is empty; give a hub name, a save_to_disk directory or a data file.")
    rows, row_report = load_rows(cfg.dataset_name, split=cfg.dataset_split, kind="pairwise",
                                 on_bad_row=cfg.on_bad_row)
    eval_rows, eval_report = [], None
    if cfg.eval_dataset_name:
        eval_rows, eval_report = load_rows(cfg.eval_dataset_name, split=cfg.eval_split, kind="pairwise",
                                           on_bad_row=cfg.on_bad_row)
    elif cfg.eval_fraction > 0:
        perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        n_eval = max(1, int(round(cfg.eval_fraction * len(rows))))
        held = set(perm[:n_eval])
        eval_rows = [r for i, r in enumerate(rows) if i in held]
        rows = [r for i, r in enumerate(rows) if i not in held]
    train, tok_report = _tokenize(rows, tokenizer, cfg, row_report.source)
    report = {"train_rows": row_report.to_dict(), "train_tokenize": tok_report.to_dict()}
    evals = []
    if eval_rows:
        evals, eval_tok = _tokenize(eval_rows, tokenizer, cfg, (eval_report or row_report).source)
        report["eval_tokenize"] = eval_tok.to_dict()
        if eval_report is not None:
            report["eval_rows"] = eval_report.to_dict()
    print(f"preflab: data: {row_report.summary()}; {tok_report.summary()}")
    report["skipped"] = dict(row_report.to_dict().get("skipped", {}))
    return train, evals, report
