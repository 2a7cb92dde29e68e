"""Rows -> validated examples -> tokenized examples for training and evaluation, with the data report.

    prepare_pairs(cfg, tokenizer)     -> (train TokenizedPair list, eval list, report)
    prepare_unpaired(cfg, tokenizer)  -> the same with TokenizedUnpaired (KTO rows, or pairs split in two)
"""
from __future__ import annotations


import copy
import sys
from collections.abc import Mapping

from preflab.errors import ConfigError, DataError, PreflabError
from preflab.objectives.base import objective_parts
from preflab.runlog import is_main_process

_ROW_KIND = {"pairs": "pairwise", "unpaired": "unpaired"}


def _tokenize(kind: str, rows, tokenizer, cfg, source):
    """Tokenize through the fingerprinted cache ($PREFLAB_CACHE_DIR, else ~/.cache/preflab, /tokenized)."""
    from preflab.data.cache import tokenize_cached
    from preflab.scoring.ref_cache import default_cache_dir

    extra = {"max_completion_length": cfg.max_completion_length} if cfg.max_completion_length else {}
    extra.update(token_settings(cfg, kind))
    if cfg.dataset_num_proc and cfg.dataset_num_proc > 1:
        extra["num_proc"] = cfg.dataset_num_proc
    return tokenize_cached(rows, tokenizer, cache_dir=default_cache_dir() / "tokenized", max_length=cfg.max_length,
                           max_prompt_length=cfg.max_prompt_length, truncation_mode=cfg.truncation_mode,
                           on_bad_row=cfg.on_bad_row, source=source, **extra)


def token_settings(cfg, kind: str) -> dict:
    """Tokenizer settings for per-token data columns (data.token_columns): every training run's batches read a
    `<side>_<name>` list column as one value per response token, so it is checked and cut with its response;
    phrase_ids when the objective reads RRPO's phrase ids (a pair with none left after the cut is a bad row)."""
    from preflab.data.phrases import PHRASE_COLUMNS

    out = {"token_extras": True}
    if kind == "pairs" and all(name in cfg.objective().required_extras for name in PHRASE_COLUMNS):
        out["phrase_ids"] = True
    return out


def is_row_source(data) -> bool:
    """True for rows still to be read (a datasets.Dataset, DatasetDict or IterableDataset, or a list of dicts: TRL's
    train_dataset / eval_dataset), False for examples a batch kind's prepare() already made (or None)."""
    datasets = sys.modules.get("datasets")  # a datasets object implies datasets is imported
    if datasets is not None and isinstance(data, (datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset)):
        return True
    return isinstance(data, (list, tuple)) and bool(data) and isinstance(data[0], Mapping)


def refuse_unreadable_data(name: str, data) -> None:
    """A ConfigError for what a trainer's train_data / eval_data cannot be read as: a path (it belongs in the config's
    dataset_name), one dict (a row, or a dict of columns), a pandas DataFrame, a generator (no length) or a function
    (streaming: true reads one), a list of texts or numbers, an empty train_data. Each was taken for ready examples
    and failed inside the first step ('str' object has no attribute 'row_id', KeyError: 172), read the dict's keys as
    3 rows, or (empty) blamed the config's dataset_name: "every row was skipped"."""
    import os
    from collections.abc import Iterator

    if is_row_source(data):  # a DatasetDict is a dict too
        return
    rows = "a datasets.Dataset or a list of row dicts"
    if isinstance(data, (str, os.PathLike)):
        raise ConfigError(f"{name} is a path ({str(data)!r}); a trainer takes rows from Python ({rows}). Name a "
                          f"file in the config instead: {'eval_' if name == 'eval_data' else ''}dataset_name: {data}.")
    if isinstance(data, Mapping):
        raise ConfigError(f"{name} is one dict (keys {', '.join(map(repr, list(data)[:5]))}); give {rows}: "
                          "[row] for one row, datasets.Dataset.from_dict(columns) for a dict of columns.")
    if hasattr(data, "columns") and hasattr(data, "to_dict") and hasattr(data, "iloc"):
        raise ConfigError(f"{name} is a pandas DataFrame; give {rows}: datasets.Dataset.from_pandas(df) or "
                          "df.to_dict('records').")
    if isinstance(data, Iterator):
        raise ConfigError(f"{name} is an iterator ({type(data).__name__}), which has no length; give {rows} "
                          "(list(...)), or set streaming: true, which reads an iterable as the steps need it.")
    if callable(data):
        raise ConfigError(f"{name} is a function; only streaming: true reads one (a function that returns a fresh "
                          f"iterable of rows each pass). Set streaming: true, or give {rows}.")
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], (str, bytes, int, float, list, tuple)):
        raise ConfigError(f"{name}[0] is a {type(data[0]).__name__} ({data[0]!r:.60}), not a row; give {rows} "
                          "(each row a dict such as {'prompt': ..., 'chosen': ..., 'rejected': ...}).")
    if name == "train_data" and isinstance(data, (list, tuple)) and not data:
        raise ConfigError("train_data is empty (no rows to train on); give the rows, or leave train_data out to "
                          "read the config's dataset_name.")


def config_reading_rows(cfg, train_data, eval_data):
    """A copy of cfg whose dataset_name / eval_dataset_name are the rows given to a trainer from Python, so that
    prepare() reads, checks and tokenizes them exactly as a file's rows (cfg's own dataset_name then only names the
    run's data, and its eval_dataset_name the eval rows', with a note); None when neither is rows. Rows mixed with
    ready examples, or eval rows beside cfg's eval_fraction, are a ConfigError."""
    refuse_unreadable_data("train_data", train_data)
    refuse_unreadable_data("eval_data", eval_data)
    train_rows, eval_rows = is_row_source(train_data), is_row_source(eval_data)
    if not (train_rows or eval_rows):
        return None
    if (train_rows and eval_data and not eval_rows) or (eval_rows and train_data is not None and not train_rows):
        raise ConfigError("train_data and eval_data must both be rows (a datasets.Dataset or a list of dicts) or "
                          "both examples prepared by preflab; convert the other one.")
    if eval_rows and cfg.eval_fraction:
        raise ConfigError(f"eval_data was given and the config has eval_fraction={cfg.eval_fraction}: two eval sets. "
                          "Keep one (remove eval_fraction from the config, or do not pass eval_data).")
    if eval_rows and isinstance(cfg.eval_dataset_name, str) and is_main_process():
        # user trial 27: TRL's DPOConfig(eval_strategy="steps") + eval_dataset= needs an eval set the config can see;
        # a name for the rows given here is it, as dataset_name names train_data (the file is not read)
        print(f"preflab: note: eval_dataset_name={cfg.eval_dataset_name!r} names the eval rows given from Python "
              "(eval_data); it is not read, as dataset_name only names train_data's rows.")
    reading = copy.copy(cfg)
    if train_rows:
        reading.dataset_name = train_data
    if eval_rows:
        reading.eval_dataset_name = eval_data
    return reading


def prepare_examples(cfg, tokenizer, kind: str = "pairs", computed: tuple = ()):
    """(train, eval, report dict). The eval split is the eval dataset, or a seeded eval_fraction of the rows.
    computed: the objective's extras the trainer computes itself (not data columns, e.g. HyPO's online terms)."""
    from preflab.data.configured_source import eval_source, naming_eval_data, training_source
    from preflab.data.report import refuse_empty
    from preflab.data.rows import load_rows

    if not cfg.dataset_name:
        raise PreflabError("dataset_name is empty; give a hub name, a save_to_disk directory or a data file.")
    from preflab.data.eval_set import note_eval_steps_without_eval_set

    note_eval_steps_without_eval_set(cfg)
    row_kind = _ROW_KIND[kind]
    extras = {k: v for k, v in cfg.objective().row_extras().items() if k not in computed}  # checked with the rows
    rows, row_report = load_rows(training_source(cfg), split=cfg.dataset_split, kind=row_kind,
                                 on_bad_row=cfg.on_bad_row, required_extras=extras)
    check_intra_rows(cfg.objective(), rows, row_report.source, cfg.loss_type)
    refuse_empty(row_report, "dataset_name", cfg.dataset_name)
    eval_rows, eval_report = [], None
    if cfg.eval_dataset_name:
        with naming_eval_data(cfg):
            eval_rows, eval_report = load_rows(eval_source(cfg), split=cfg.eval_split, kind=row_kind,
                                               on_bad_row=cfg.on_bad_row, required_extras=extras)
        check_intra_rows(cfg.objective(), eval_rows, eval_report.source, cfg.loss_type)
        refuse_empty(eval_report, "eval_dataset_name", cfg.eval_dataset_name)
    elif cfg.eval_fraction > 0:
        # hold out whole source rows (a pair split into two KTO examples stays on one side), and whole parent_id
        # groups when every row names its parent (rows derived from one base pair, preflab.data.mapl)
        from preflab.data.holdout import hold_out_rows

        read = len(rows)
        rows, eval_rows, (units_held, units, by_parent) = hold_out_rows(rows, cfg.eval_fraction, cfg.seed)
        if read and not rows:  # else "no training rows are left ...: every row was skipped", which none was
            from preflab.data.eval_set import refuse_holding_out_everything

            refuse_holding_out_everything(cfg, units, "row" if not by_parent else "parent_id group")
        if by_parent and is_main_process():
            print(f"preflab: note: eval_fraction={cfg.eval_fraction} holds out whole parent_id groups ({units_held} "
                  f"of {units}), so rows built from one base pair (MAPL's original, intra and inter rows) stay "
                  "on one side: an eval row's response is never a training row's.")
    from preflab.data.overlap import overlap_notes, overlap_report

    overlap = overlap_report(rows, eval_rows)
    train, tok_report = _tokenize(kind, rows, tokenizer, cfg, row_report.source)
    report = {"train_rows": row_report.to_dict(), "train_tokenize": tok_report.to_dict(), "overlap": overlap}
    evals, said = [], []
    if eval_report is not None:
        report["eval_rows"] = eval_report.to_dict()
        said.append(eval_report.summary())
    if eval_rows:
        evals, eval_tok = _tokenize(kind, eval_rows, tokenizer, cfg, (eval_report or row_report).source)
        report["eval_tokenize"] = eval_tok.to_dict()
        said.append(eval_tok.summary())
    if (cfg.eval_dataset_name or cfg.eval_fraction > 0) and not evals:  # else evaluation would silently not run
        raise DataError(f"the eval set ({cfg.eval_dataset_name or f'eval_fraction={cfg.eval_fraction}'}) has no "
                        f"usable examples: {'; '.join(said) or 'no rows'}. Fix its rows (or max_length), or drop "
                        "the eval set.")
    if is_main_process():
        print(f"preflab: data: {row_report.summary()}; {tok_report.summary()}")
        if said:
            print(f"preflab: data (eval): {'; '.join(said)}")
        notes = [row_report.mixed_forms_note(), eval_report and eval_report.mixed_forms_note(),
                 row_report.eval_forms_note(eval_report), truncation_note(cfg, tok_report),
                 row_report.split_pairs_note(), eval_report and eval_report.split_pairs_note(),
                 row_report.repeated_prompt_note(),
                 *overlap_notes(overlap, len(eval_rows))]
        if token_settings(cfg, kind).get("phrase_ids"):  # RRPO: rows without phrase columns get derived ids
            from preflab.data.phrases import derived_phrase_note

            notes += [derived_phrase_note(rows), derived_phrase_note(eval_rows, "eval")]
        if kind == "pairs":  # orpo / cpo / simpo / alphapo: where TRL's experimental trainers build other ids
            from preflab.loops.trl_experimental_tokens import experimental_tokens_note

            notes.append(experimental_tokens_note(cfg.objective(), rows, train, tokenizer))
        if kind == "unpaired":
            desirable = sum(bool(x.label) for x in train)
            notes.append(one_label_note(desirable, len(train), row_report.source))
            notes.append(kto_weight_note(cfg.objective(), desirable, len(train), row_report.source))
        for note in filter(None, notes):
            print(f"preflab: note: data: {note}")
    from preflab.data.report import training_skipped

    report["skipped"] = training_skipped(report)  # training rows left out: read + tokenized
    return train, evals, report


def accepts_intra_rows(objective) -> bool:
    """Whether `objective` compares one response under two prompts (tag data: prompt-side; rc_dpo, rc_bt), so it may
    read MAPL intra rows (PairExample.rejected_prompt): every part of a weighted sum must."""
    return all("prompt-side" in (getattr(p, "tags", None) or {}).get("data", ()) for p in objective_parts(objective))


def check_intra_rows(objective, examples, source: str, loss_type) -> int:
    """The number of MAPL intra rows in `examples`; DataError (naming the first such row) when there are some and
    `objective` does not compare prompts: any other loss would read y | x_w against y | x_l as two responses."""
    intra = [x for x in examples if getattr(x, "rejected_prompt", None) is not None]
    if intra and not accepts_intra_rows(objective):
        raise DataError(f"{source}: row {intra[0].row_id}: fields prompt_chosen / prompt_rejected: {len(intra)} "
                        f"MAPL intra rows (one completion under two prompts), which loss_type={loss_type!r} does not "
                        "read. Train them with loss_type: rc_dpo (task: dpo) or task: reward (reward_head: bt, the "
                        "Rc-BT loss), or drop those rows.")
    return len(intra)


def one_label_note(desirable: int, total: int, source: str) -> str | None:
    """A note when every one of the `total` unpaired training examples has the same label (`desirable` of them
    true): KTO's loss then has no term for the other side (TRL's KTO data holds both desirable and undesirable
    examples)."""
    if total and desirable in (0, total):
        which = "desirable (label true)" if desirable else "undesirable (label false)"
        return (f"every one of the {total} training examples of {source} is {which}: the objective gets no "
                f"{'undesirable' if desirable else 'desirable'} term. Check the label column (true / false, 1 / 0).")
    return None


def kto_weight_note(objective, desirable: int, total: int, source: str) -> str | None:
    """TRL 1.16 KTOTrainer's balance check (Ethayarajh et al. 2024, KTO, Eq. 8; methods/objectives.md §A5): with
    unequal label counts the weighted ratio lambda_D n_D / (lambda_U n_U) should lie in [1, 4/3]. As TRL (bound
    1.33, ranges rounded to 2 places): a note when neither desirable_weight lies in
    [n_U lambda_U / n_D, 1.33 n_U lambda_U / n_D] nor undesirable_weight in [n_D lambda_D / (1.33 n_U),
    n_D lambda_D / n_U], naming both ranges. None for equal counts, one label only (one_label_note says that) or an
    objective without the two weights (every part of a weighted sum that has them is checked)."""
    n_d, n_u = desirable, total - desirable
    if n_d == n_u or 0 in (n_d, n_u):
        return None
    for part in objective_parts(objective):
        w_d, w_u = getattr(part, "desirable_weight", None), getattr(part, "undesirable_weight", None)
        if w_d is None or w_u is None:
            continue
        d_lo, d_hi = round(n_u * w_u / n_d, 2), round(n_u * w_u / n_d * 1.33, 2)
        u_lo, u_hi = round(n_d * w_d / n_u / 1.33, 2), round(n_d * w_d / n_u, 2)
        if not (d_lo <= w_d <= d_hi or u_lo <= w_u <= u_hi):
            return (f"{source} holds {desirable} desirable and {total - desirable} undesirable training examples; "
                    f"with desirable_weight={w_d} and undesirable_weight={w_u} the weighted ratio "
                    f"{w_d * n_d / (w_u * n_u):.3g} is outside KTO's recommended [1, 4/3] (TRL's KTOTrainer warns "
                    f"too). Set EITHER desirable_weight in [{d_lo}, {d_hi}] OR undesirable_weight in "
                    f"[{u_lo}, {u_hi}] (not both).")
    return None


def prepare_pairs(cfg, tokenizer):
    return prepare_examples(cfg, tokenizer, "pairs")


def prepare_unpaired(cfg, tokenizer):
    return prepare_examples(cfg, tokenizer, "unpaired")


ID_FIELDS = (("prompt_ids", "prompt"), ("chosen_ids", "chosen"), ("rejected_ids", "rejected"),
             ("rejected_prompt_ids", "prompt"), ("completion_ids", "completion"),
             ("mismatched_completion_ids", "completion"))


def check_ids_fit_embeddings(policy, tokenizer, pad_id: int | None, sets) -> None:
    """Every token id the run feeds the policy must index a row of its input embedding. A tokenizer given tokens
    after the model was saved (`add_special_tokens` of a chat template's `<|im_start|>`, a new `[PAD]`) without
    `model.resize_token_embeddings` made the run stop mid-step with `IndexError: index out of range in self`
    (TRL: the same, or a CUDA device-side assert), naming no row. `sets`: (source, items) of tokenized examples;
    the first example holding such an id is a DataError naming its row and field, a pad token past the embedding a
    ConfigError. Only scanned when the tokenizer has more tokens than the embedding has rows."""
    check = embedding_ids_check(policy, tokenizer, pad_id)
    if check is not None:
        for source, items in sets:
            check(source, items)


def embedding_ids_check(policy, tokenizer, pad_id: int | None):
    """check(source, items) that raises check_ids_fit_embeddings' DataError for the first of `items` holding a
    token id past the policy's input embedding, or None when no id can be past it (the tokenizer has no more tokens
    than the embedding has rows, or either does not say its size). A pad token past the embedding is a ConfigError
    here, at once. A streaming run (preflab.loops.streaming.StreamedBatches) checks each global batch as it is read,
    as the ordinary run checks its whole tokenized data before training."""
    try:
        embedding = policy.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # a model without one (or that does not say): nothing to check
        embedding = None
    rows = getattr(embedding, "num_embeddings", None)
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None  # a stand-in that does not say its size: unchecked
    if not isinstance(rows, int) or size is None or size <= rows and (pad_id is None or pad_id < rows):
        return None
    from preflab.data.report import place_of, where

    fix = (f"Resize the model's embeddings to the tokenizer and save both: model.resize_token_embeddings("
           f"len(tokenizer)) (here {len(tokenizer)}); model.save_pretrained(dir); tokenizer.save_pretrained(dir).")
    if pad_id is not None and pad_id >= rows:
        raise ConfigError(f"the tokenizer's pad token {tokenizer.convert_ids_to_tokens(pad_id)!r} has id {pad_id}, "
                          f"but the model has {rows} token embeddings (ids 0 to {rows - 1}), so every padded batch "
                          f"would fail. {fix}")

    def check(source, items) -> None:
        for item in items:
            for attr, field_name in ID_FIELDS:
                ids = getattr(item, attr, None)
                big = [i for i in ids if i >= rows] if isinstance(ids, list) and ids and max(ids) >= rows else []
                if big:
                    file, line = place_of(item)
                    raise DataError(f"{where(file or source, item.row_id, line)}, field {field_name!r}: token "
                                    f"{tokenizer.convert_ids_to_tokens(big[0])!r} has id {big[0]}, but the model has "
                                    f"{rows} token embeddings (ids 0 to {rows - 1}): the tokenizer holds tokens the "
                                    f"model cannot embed, and the run would stop with an IndexError. {fix}")

    return check


def truncation_note(cfg, tok_report) -> str | None:
    """Which end of the cut prompts and responses the training examples kept, or None when nothing was cut. The data
    line counts them (`prompt truncated N; response truncated M`) without saying where, and the rules differ by
    option: max_prompt_length keeps a prompt's end unless truncation_mode is keep_start (TRL 0.x's keep_end default
    for prompts), max_length keeps a sequence's start (TRL 1.16's keep_start) or, under keep_end, its end (the
    prompt's start is cut), max_completion_length keeps a response's start (tokenize._truncate)."""
    prompts, responses = tok_report.prompt_truncated, tok_report.response_truncated
    if not (prompts or responses):
        return None
    mode = cfg.truncation_mode
    said = []
    if prompts and mode == "keep_start":
        said.append(f"{prompts} example(s) kept their prompt's start (max_prompt_length={cfg.max_prompt_length}, "
                    "truncation_mode: keep_start)")
    elif prompts and mode == "keep_end":
        said.append(f"{prompts} example(s) lost their prompt's start (truncation_mode: keep_end keeps the end)")
    elif prompts:
        said.append(f"{prompts} example(s) lost their prompt's start: a prompt over max_prompt_length="
                    f"{cfg.max_prompt_length} keeps its end when truncation_mode is unset (TRL 0.x's keep_end); "
                    "set truncation_mode: keep_start to keep its start")
    if responses:
        limits = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("max_length", "max_completion_length")
                           if getattr(cfg, k))
        said.append(f"{responses} example(s) had a response cut ({limits}): " + (
            "under keep_end a response longer than max_length keeps its end, max_completion_length keeps its start"
            if mode == "keep_end" else "each keeps its start, its end is not trained"))
    return "truncation: " + "; ".join(said) + "."
