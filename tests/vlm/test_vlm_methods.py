"""PaMi-VDPO (input-side negatives), CAT-ADPO (ambiguity-aware pairs) and the clue aggregator, through the trainer."""
import math

import pytest

import torch
import torch.nn.functional as F

from preflab.config import config_from_dict
from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
from preflab.data.vision_pairs import build_cat_pairs, build_pami_pairs, judge_ambiguity
from preflab.loops.vlm import VisionTrainer, answer_scorer
from preflab.models.clue_aggregator import attach_clue_aggregator
from preflab.models.load import frozen_copy
from preflab.scoring.vlm import VisionLogProbScorer, collate_vision_pairs, naive_vision_token_logps

from vlm_helpers import image, pair_row, tiny


def _cfg(tmp_path, **kw):
    base = dict(task="vlm", model_name_or_path="builtin:tiny-qwen2-vl", dataset_name="unused",
                output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, learning_rate=1e-3, max_steps=2,
                logging_steps=1, disable_tqdm=True, use_cpu=True)
    return config_from_dict({**base, **kw})


def _sft_rows(n=4):
    return [{"images": [image((200, 30 * i, 20), seed=i)], "prompt": "what colour is it?",
             "response": f"it is colour {i}"} for i in range(n)]


def test_pami_selects_the_far_candidate_and_trains_on_input_side_dpo(tmp_path):
    model, processor = tiny("qwen2_vl")
    examples, _ = read_vision_pairs(_sft_rows(), responses_only=True)
    score = answer_scorer(model, processor, None)
    pairs, info = build_pami_pairs(examples, score, num_candidates=3, augmentations=("flip", "noise", "mask"))
    for ex, pair in zip(examples, pairs):  # same answer on both sides; the rejected images are the argmax-gap clip
        assert pair.chosen == pair.rejected == ex.chosen and pair.rejected_images is not None
        gap = score(ex, ex.images) - score(ex, pair.rejected_images)
        assert abs(gap - pair.extras["pami_gap"]) < 1e-4
    # the selected gap is the largest of the K candidates drawn with the same seed
    from preflab.data.vision_pairs import pami_candidates

    gen = torch.Generator().manual_seed(0)
    cands = pami_candidates(examples[0], 3, ("flip", "noise", "mask"), gen)
    gaps = [score(examples[0], examples[0].images) - score(examples[0], c) for c in cands]
    assert abs(max(gaps) - pairs[0].extras["pami_gap"]) < 1e-4
    tokenized, _, _ = tokenize_vision_pairs(pairs, processor)
    ref = frozen_copy(model)
    trainer = VisionTrainer(_cfg(tmp_path, beta=0.3), policy=model, ref=ref, processor=processor,
                            train_data=tokenized)
    mb = trainer.micro_batches(0)[0]
    out = trainer.forward(mb)
    assert abs(float(out.loss) - math.log(2)) < 1e-5  # theta = ref: every input-side margin is 0
    trainer.train()
    with torch.no_grad():
        pol, rf = naive_vision_token_logps(model, mb.layout).sum(-1), naive_vision_token_logps(ref, mb.layout).sum(-1)
        b = len(mb.row_ids)
        expected = -F.logsigmoid(0.3 * ((pol[:b] - rf[:b]) - (pol[b:] - rf[b:]))).mean()
        got = trainer.forward(mb).loss
    assert torch.allclose(got, expected, atol=1e-5) and float(got) < math.log(2)


def test_pami_identical_input_gives_log2_and_zero_gradient(tmp_path):
    model, processor = tiny("llava")
    (ex,), _ = read_vision_pairs(_sft_rows(1), responses_only=True)
    ex.rejected_images = list(ex.images)
    tokenized, _, _ = tokenize_vision_pairs([ex], processor)
    policy = tiny("llava")[0]
    with torch.no_grad():  # move the policy away from the reference so that the gradient could be non-zero
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    trainer = VisionTrainer(_cfg(tmp_path, model_name_or_path="builtin:tiny-llava", per_device_train_batch_size=1),
                            policy=policy, ref=model, processor=processor, train_data=tokenized)
    out = trainer.forward(trainer.micro_batches(0)[0])
    assert abs(float(out.loss) - math.log(2)) < 1e-6
    out.loss.backward()
    assert max(float(p.grad.abs().max()) for p in policy.parameters() if p.grad is not None) < 1e-6


def test_cat_builder_keeps_ambiguous_answers_and_names_the_object():
    rows = [{"images": [image((200, 0, 0))], "prompt": "what is in the picture?", "response": "there is something",
             "objects": ["red square"]},
            {"images": [image((0, 200, 0))], "prompt": "what is in the picture?",
             "response": "a green circle", "objects": ["green circle"]},
            {"images": [image((0, 0, 200))], "prompt": "what is in the picture?", "response": "I see a shape",
             "objects": ["blue cross"], "rewrite": "I see a blue cross on the left"}]
    examples, _ = read_vision_pairs(rows, responses_only=True)
    pairs, info = build_cat_pairs(examples)
    assert info["dropped"] == {"not_ambiguous": 1} and [p.row_id for p in pairs] == [0, 2]
    text = lambda m: m[0]["content"][0]["text"]  # noqa: E731
    assert text(pairs[0].chosen) == "there is the red square" and text(pairs[0].rejected) == "there is something"
    assert text(pairs[1].chosen) == "I see a blue cross on the left"
    assert "something" in pairs[0].extras["adpo_rationale"]
    assert judge_ambiguity("it is the red square", ["red square"])[0] is False


def _cat_data(tmp_path):
    """Four CAT rows (a vague SFT answer, one annotated object each) as a JSONL file with its images."""
    import json

    rows = [{"images": [image((200, 0, 0), seed=i)], "prompt": "what is in the picture?",
             "response": "there is something", "objects": [["red square", "green dot"][i % 2]]} for i in range(4)]
    data = tmp_path / "cat.jsonl"
    with data.open("w") as f:
        for i, r in enumerate(rows):
            r["images"][0].save(tmp_path / f"{i}.png")
            f.write(json.dumps({**r, "images": [f"{i}.png"]}) + "\n")
    return data


def test_cat_pipeline_with_clue_aggregator(tmp_path):
    data = _cat_data(tmp_path)
    cfg = _cfg(tmp_path, dataset_name=str(data), vision_pairs="cat_adpo", clue_aggregator=True, learning_rate=1e-2)
    trainer = VisionTrainer(cfg)
    agg = trainer.policy.clue_aggregator
    assert trainer.data_report["train_builder"]["pairs"] == 4
    assert any(p is agg.out.weight for p in trainer.params)
    before = agg.out.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, agg.out.weight)  # the aggregator trained with the policy


def test_cat_pairs_with_rpo_alpha_train_the_paper_notes_dpo_plus_sft_form(tmp_path):
    """A paper note on CAT (ECCV 2024) writes ADPO as L_DPO + 0.1 L_SFT; the released trainer (Bay-CAT
    ADPO_CAT/train_dpo.py) trains plain DPO. `rpo_alpha: 0.1` on cat_adpo pairs gives the note's form: at theta = ref
    the loss is log 2 + 0.1 x the token-mean NLL of the chosen (rewritten) answers, here from the model's own logits."""
    data = _cat_data(tmp_path)
    trainer = VisionTrainer(_cfg(tmp_path, dataset_name=str(data), vision_pairs="cat_adpo", beta=0.1, rpo_alpha=0.1))
    mb = trainer.micro_batches(0)[0]
    with torch.no_grad():
        got = float(trainer.forward(mb).loss)
        lp = naive_vision_token_logps(trainer.policy, mb.layout)
        b = len(mb.row_ids)
        nll = float(-lp[:b].sum() / mb.layout.response_mask[:b].sum())
    assert nll > 1.0  # the SFT term is not negligible on the untrained model
    assert got == pytest.approx(math.log(2) + 0.1 * nll, abs=1e-5)


def test_cat_rows_without_objects_are_a_data_error_naming_the_eval_file_row_and_field(tmp_path):
    """README walk: `preflab eval RUN --task vlm --data pairs.jsonl` on a cat_adpo run stopped with
    "cat_adpo: row 0 needs a non-empty `objects` list" (a ConfigError naming no file); the eval file is named now."""
    import json

    from preflab.errors import DataError

    def write(name, rows):
        with (tmp_path / name).open("w") as f:
            for i, r in enumerate(rows):
                r["images"][0].save(tmp_path / f"{name}-{i}.png")
                f.write(json.dumps({**r, "images": [f"{name}-{i}.png"]}) + "\n")
        return str(tmp_path / name)

    train = write("cat.jsonl", [{**r, "response": "there is something", "objects": ["red square"]}
                                for r in _sft_rows(2)])
    heldout = write("heldout.jsonl", [{**r, "response": "there is something", "objects": ["red square"]}
                                      for r in _sft_rows(2)])
    rows = [json.loads(line) for line in open(heldout)]
    rows[1].pop("objects")
    with open(heldout, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    cfg = _cfg(tmp_path, dataset_name=train, eval_dataset_name=heldout, vision_pairs="cat_adpo")
    with pytest.raises(DataError, match=r"heldout\.jsonl: row 1, field 'objects'.*vision_pairs: given"):
        VisionTrainer(cfg)


def test_clue_aggregator_is_identity_at_attach_and_question_conditioned():
    model, processor = tiny("qwen2_vl")
    rows = [pair_row("what colour is it?", seed=1), pair_row("is it round or square?", seed=1)]
    examples, _ = read_vision_pairs(rows)
    pairs, _, _ = tokenize_vision_pairs(examples, processor)
    layout = collate_vision_pairs(pairs, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        plain = VisionLogProbScorer(model)(layout).token_logps
        agg = attach_clue_aggregator(model, processor)
        same = VisionLogProbScorer(model)(layout).token_logps
        assert torch.allclose(plain, same, atol=1e-6)  # zero-initialised output: nothing changes at attach
        agg.out.weight.normal_(0, 0.5)
        # the same image and answer, two questions: the visual tokens (hence the answer's log-probs) now differ
        # by more than the question text alone makes them differ without the aggregator
        with_agg = VisionLogProbScorer(model)(layout).token_logps
    delta_plain = (plain[0] - plain[1]).abs().sum()
    delta_agg = (with_agg[0] - with_agg[1]).abs().sum()
    assert not torch.allclose(with_agg, plain, atol=1e-4)
    assert abs(float(delta_agg - delta_plain)) > 1e-4
    # the response never reaches the visual tokens: with the prompt lengths set by the scorer, only prompt tokens
    # are the question, so changing the answer leaves every prompt position's hidden state unchanged
    other = [pair_row("what colour is it?", chosen="a completely different answer", seed=1)]
    layout2 = collate_vision_pairs(tokenize_vision_pairs(read_vision_pairs(other)[0], processor)[0],
                                   processor.tokenizer.pad_token_id)
    with torch.no_grad():
        h1 = VisionLogProbScorer(model)(layout, want_hidden=True).hidden_flat
        h2 = VisionLogProbScorer(model)(layout2, want_hidden=True).hidden_flat
    assert torch.allclose(h1[0], h2[0], atol=1e-5)  # the first response token is predicted from the prompt alone


def test_clue_aggregator_prefix_shared_equals_padded():
    model, processor = tiny("llava")
    agg = attach_clue_aggregator(model, processor)
    with torch.no_grad():
        agg.out.weight.normal_(0, 0.5)
    rows = [pair_row("what colour is it?", seed=1), pair_row("which shape?", "a square", "a circle", seed=2)]
    pairs, _, _ = tokenize_vision_pairs(read_vision_pairs(rows)[0], processor)
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():  # the question of a shared row is its prompt only, as in the padded rows
        a = VisionLogProbScorer(model)(collate_vision_pairs(pairs, pad, "prefix_shared")).token_logps
        b = VisionLogProbScorer(model)(collate_vision_pairs(pairs, pad, "padded")).token_logps
    assert torch.allclose(a, b, atol=1e-5)


def test_pami_close_filter_excludes_far_candidates():
    model, processor = tiny("qwen2_vl")
    examples, _ = read_vision_pairs(_sft_rows(2), responses_only=True)
    score = answer_scorer(model, processor, None, with_features=True)
    augs = ("flip", "noise", "mask", "colour")
    free, _ = build_pami_pairs(examples, score, 4, augs, tau_sim=-1.0)  # every candidate is close
    plain, _ = build_pami_pairs(examples, answer_scorer(model, processor, None), 4, augs)
    assert [p.extras["pami_gap"] for p in free] == pytest.approx([p.extras["pami_gap"] for p in plain], abs=1e-4)
    strict, info = build_pami_pairs(examples, score, 4, augs, tau_sim=1.01)  # none is close: the most similar
    assert info["rows_without_close_candidate"] == 2
    from preflab.data.vision_pairs import pami_candidates

    gen = torch.Generator().manual_seed(0)
    cands = pami_candidates(examples[0], 4, augs, gen)
    base = score(examples[0], examples[0].images)[1]
    sims = [float(F.cosine_similarity(base, score(examples[0], c)[1], dim=0)) for c in cands]
    best = max(range(4), key=sims.__getitem__)
    assert strict[0].extras["pami_gap"] == pytest.approx(score(examples[0], examples[0].images)[0]
                                                         - score(examples[0], cands[best])[0], abs=1e-4)


def test_repeated_vision_pairs_are_counted_by_tokens_and_pixels():
    """Text rows got a 'repeat an earlier one exactly' note, vision rows none: a copied row (same images) trained
    twice per epoch without a word. The same text with other pixels is not a repeat."""
    from preflab.loops.vlm import repeated_vision_pairs

    _, processor = tiny("qwen2_vl")
    rows = [pair_row(seed=0), pair_row(seed=0), pair_row(seed=5), pair_row(seed=0)]
    pairs, _, _ = tokenize_vision_pairs(read_vision_pairs(rows)[0], processor)
    assert repeated_vision_pairs(pairs) == 2 and repeated_vision_pairs(pairs[1:3]) == 0


def test_a_vision_run_prints_the_repeated_pairs_note_in_the_words_of_the_text_runs(tmp_path, capsys):
    """prepare_vision_data says how many train pairs repeat an earlier one, in data.overlap.repeats_note's words."""
    import json

    from preflab.loops.vlm import prepare_vision_data

    _, processor = tiny("qwen2_vl")
    with (tmp_path / "p.jsonl").open("w") as f:
        for i, seed in enumerate([0, 0, 5, 0]):
            row = pair_row(seed=seed)
            row["images"][0].save(tmp_path / f"{i}.png")
            f.write(json.dumps({**row, "images": [f"{i}.png"]}) + "\n")
    cfg = config_from_dict(dict(task="vlm", model_name_or_path="builtin:tiny-qwen2-vl",
                                dataset_name=str(tmp_path / "p.jsonl"), output_dir=str(tmp_path / "out")))
    capsys.readouterr()
    prepare_vision_data(cfg, processor, None, cfg.objective())
    assert ("\npreflab: note: data: 2 train pair(s) repeat an earlier one exactly (same tokens and image pixels): each "
            "copy is trained on.\n") in capsys.readouterr().out


def test_a_vision_tokenization_error_names_the_rows_line(tmp_path):
    """The same-tokens check runs at tokenization, where examples carried the row only: after a blank line the
    message names the line the row was read from."""
    import json

    from preflab.errors import DataError

    _, processor = tiny("qwen2_vl")
    image((200, 20, 20)).save(tmp_path / "red.png")
    rows = [pair_row(), pair_row(chosen="red red red", rejected="red red blue")]
    for row in rows:
        row["images"] = ["red.png"]
    (tmp_path / "pairs.jsonl").write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    examples, _ = read_vision_pairs(str(tmp_path / "pairs.jsonl"))
    with pytest.raises(DataError, match=r"pairs\.jsonl row 1 \(line 3\), field 'rejected': chosen and rejected "
                                        r"have the same tokens"):
        tokenize_vision_pairs(examples, processor, max_completion_length=2)


def test_cat_builder_rewrites_the_first_vague_referent_only():
    """CAT's rewrite replaces the answer's first vague referent (by position) with the annotated object(s), "the a
    and the b" for two; later vague words stay."""
    from preflab.data.vision_pairs import rewrite_specific

    assert rewrite_specific("it is something near it", ["red square"]) == "the red square is something near it"
    assert rewrite_specific("I see something and stuff", ["red square", "dot"]) == \
        "I see the red square and the dot and stuff"
