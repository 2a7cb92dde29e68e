"""SFTConfig's packing_strategy (preflab.loops.sft_packing): the sequences preflab trains on equal the packed rows of
TRL 1.16's own SFTTrainer (pack_dataset on its tokenized rows) with the same options: bfd_split's fragments (token
ids, and the tokens that carry loss after TRL's collator masks each fragment's first label) and wrapped's chunks, in
order; wrapped's loss equals TRL's loss on its chunks, bfd_split's equals each fragment scored alone."""
import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.report import TokenizeReport
from preflab.loops.sft import SFTKind, SFTLoss, collate_sft, tokenize_sft_row
from preflab.loops.sft_packing import pack_examples
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.scoring.lm import LogProbScorer

datasets = pytest.importorskip("datasets")
pytest.importorskip("trl")

MAX = 16
TEXT = [{"text": "the cat sat on the mat and then it slept for a long while"}, {"text": "hi"},
        {"text": "what is two plus three ? five"}, {"text": "a b"}, {"text": "one more line of text to cut up"}]
PROMPT_COMPLETION = [{"prompt": "the dog ran", "completion": " to the park and back home again today"},
                     {"prompt": "how many legs does a spider have ?", "completion": " eight"},
                     {"prompt": "q", "completion": " a short one"}]


def _ours(rows, strategy):
    cfg = config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "synthetic",
                            "max_length": MAX, "packing": True, "packing_strategy": strategy, "use_cpu": True})
    tok = tiny_tokenizer()
    items = [tokenize_sft_row(i, row, tok, cfg, TokenizeReport())[0] for i, row in enumerate(rows)]
    return pack_examples(items, strategy, MAX)


def _trl(rows, strategy):
    """TRL 1.16's SFTTrainer's packed training rows: input_ids, labels (and seq_lengths for bfd_split); its model."""
    from trl import SFTConfig, SFTTrainer as TRLSFTTrainer

    tok = tiny_tokenizer()
    trainer = TRLSFTTrainer(model=tiny_causal_lm(tok, seed=0), processing_class=tok,
                            args=SFTConfig(output_dir="unused", report_to=[], use_cpu=True, bf16=False, max_length=MAX,
                                           packing=True, packing_strategy=strategy),
                            train_dataset=datasets.Dataset.from_list(rows))
    return [dict(x) for x in trainer.train_dataset], trainer


def _sequence(x):
    """(token ids, positions that carry loss) of a preflab example."""
    mask = x.loss_mask or [True] * len(x.completion_ids)
    return tuple(x.prompt_ids + x.completion_ids), tuple(len(x.prompt_ids) + k for k, m in enumerate(mask) if m)


@pytest.mark.parametrize("rows", [TEXT, PROMPT_COMPLETION], ids=["text", "prompt_completion"])
def test_bfd_split_fragments_equal_trls_packed_sequences(rows):
    """TRL's packed rows cut at their seq_lengths are preflab's fragments (as a multiset: TRL bins them, preflab
    bins each micro-batch's); a fragment's first token carries no loss (TRL's collator: position 0 -> -100); TRL's
    fragments with no loss token are the ones preflab leaves out and counts."""
    ours, left_out = _ours(rows, "bfd_split")
    packed, _ = _trl(rows, "bfd_split")
    theirs = []
    for row in packed:
        start = 0
        for n in row["seq_lengths"]:
            ids, labels = row["input_ids"][start:start + n], row["labels"][start:start + n]
            theirs.append((tuple(ids), tuple(t for t in range(1, n) if labels[t] != -100)))
            start += n
    assert any(len(ids) == MAX for ids, _ in theirs) and max(len(ids) for ids, _ in theirs) == MAX  # really split
    kept = [x for x in theirs if x[1]]
    assert sorted(_sequence(x) for x in ours) == sorted(kept)
    assert left_out == len(theirs) - len(kept)


@pytest.mark.parametrize("rows", [TEXT, PROMPT_COMPLETION], ids=["text", "prompt_completion"])
def test_wrapped_chunks_equal_trls_packed_rows_in_order_and_their_loss(rows):
    """wrapped: TRL's packed rows, in order, are preflab's chunks (token ids and loss tokens: its labels after
    position 0; a text row's first token is labelled and predicted from the row before it); the loss of preflab's SFT
    objective on the chunks equals TRL's model loss on its collated rows."""
    ours, left_out = _ours(rows, "wrapped")
    packed, trainer = _trl(rows, "wrapped")
    theirs = [(tuple(r["input_ids"]), tuple(t for t in range(1, len(r["labels"])) if r["labels"][t] != -100))
              for r in packed]
    assert len(theirs) > 1 and left_out == sum(1 for _, loss in theirs if not loss)
    assert [_sequence(x) for x in ours] == [x for x in theirs if x[1]]
    model = trainer.model.eval()
    batch = trainer.data_collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in packed])
    with torch.no_grad():
        trl_loss = model(**batch).loss
        ours_loss = SFTLoss()(SFTKind.split(LogProbScorer(model)(collate_sft(ours, 0, False)), None, {})).loss
    assert float(ours_loss) == pytest.approx(float(trl_loss), abs=1e-5)


def test_bfd_split_loss_equals_each_fragment_scored_alone():
    """Packed into rows of MAX tokens (block-diagonal, positions restarted), the fragments' loss is the token mean of
    each fragment run alone through the model."""
    ours, _ = _ours(TEXT, "bfd_split")
    model = tiny_causal_lm(tiny_tokenizer(), seed=0).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x in ours:
            ids, loss_at = _sequence(x)
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            total -= sum(float(logp[t - 1, ids[t]]) for t in loss_at)
            count += len(loss_at)
        packed = collate_sft(ours, 0, True, max_row_tokens=MAX)
        loss = SFTLoss()(SFTKind.split(LogProbScorer(model)(packed), None, {})).loss
    assert packed.input_ids.shape[0] < len(ours)  # several fragments per row
    assert float(loss) == pytest.approx(total / count, abs=1e-5)


def test_sft_trainer_trains_on_the_chunks_and_says_how_many(tmp_path, capsys):
    """task: sft with packing_strategy: wrapped reads the file's rows untruncated, trains on their chunks of
    max_length tokens (the eval rows' too) and says rows -> chunks in its data line and summary.json's data."""
    import json
    from pathlib import Path

    from preflab.loops.sft import SFTTrainer

    torch.set_num_threads(1)
    data = Path(__file__).resolve().parents[2] / "examples/data/loud_echo_sft.jsonl"
    cfg = config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                            "max_length": 32, "packing": True, "packing_strategy": "wrapped", "max_steps": 1,
                            "per_device_train_batch_size": 2, "eval_fraction": 0.25, "disable_tqdm": True,
                            "use_cpu": True, "output_dir": str(tmp_path / "out")})
    trainer = SFTTrainer(cfg)
    assert all(len(x.prompt_ids) + len(x.completion_ids) <= 32 for x in trainer.train_data + trainer.eval_data)
    assert sum(len(x.prompt_ids) + len(x.completion_ids) == 32 for x in trainer.train_data) >= len(
        trainer.train_data) - 1  # every chunk but the last is full
    summary = trainer.train()
    packing = summary["data"]["packing"]
    assert packing["strategy"] == "wrapped" and packing["train_sequences"] == len(trainer.train_data)
    assert f"{packing['train_rows']} training rows -> {len(trainer.train_data)} chunks" in capsys.readouterr().out
    assert json.loads((tmp_path / "out/summary.json").read_text())["data"]["packing"] == packing


def test_eval_fraction_note_counts_rows_before_bfd_split(capsys):
    """eval_fraction splits the tokenized rows before bfd_split cuts them: the hold-out line counts those rows
    (12 of the file's 48 at 0.25; 36 train, the packing line's training rows), not the fragments cut from them."""
    from pathlib import Path

    from preflab.loops.sft_rows import prepare_sft

    data = Path(__file__).resolve().parents[2] / "examples/data/loud_echo_sft.jsonl"
    cfg = config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                            "max_length": 12, "packing": True, "packing_strategy": "bfd_split", "max_steps": 1,
                            "eval_fraction": 0.25, "seed": 0, "use_cpu": True, "output_dir": "unused"})
    train, evals, report = prepare_sft(cfg, tiny_tokenizer())
    out = capsys.readouterr().out
    assert report["packing"]["train_rows"] == 36 and len(train) > 36  # several fragments per row
    assert "eval_fraction=0.25 holds out 12 of the 48 tokenized examples (seed 0); 36 train." in out, out
    assert "bfd_split: 36 training rows ->" in out
