"""Rows tokenized by preflab equal what TRL 1.16's own trainers make of them (DPOTrainer, KTOTrainer, SFTTrainer and
RewardTrainer `_prepare_dataset`, called with a stand-in `self`), with tokenizers that carry real families' special
tokens and original chat templates: ChatML (Qwen2.5), Qwen3 (drops <think> blocks of earlier turns, adds an empty
one to the last), Llama-3 (<|eot_id|>, trims content), Gemma (<end_of_turn>, no system role), Phi-3 (<|end|> then
eos after the last turn), and GPT-2-style tokenizers whose bos is <|endoftext|> and is not added to text."""
import sys
import types
from pathlib import Path

import pytest

from preflab.data.report import TokenizeReport
from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs, tokenize_unpaired
from preflab.loops.sft import tokenize_sft_row

sys.path.insert(0, str(Path(__file__).parent))
from families import TOKENS, chat_template, family_tokenizer  # noqa: E402

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

user = lambda t: {"role": "user", "content": t}  # noqa: E731
bot = lambda t: {"role": "assistant", "content": t}  # noqa: E731
system = lambda t: {"role": "system", "content": t}  # noqa: E731
TEXT_PAIRS = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
              {"prompt": "The cat sat on the", "chosen": " mat", "rejected": " park ."}]
CHAT_PAIRS = [
    {"prompt": [user("Sky?")], "chosen": [bot("Blue.")], "rejected": [bot("Green.")]},
    {"prompt": [system("Be brief."), user("Sky?")], "chosen": [bot("Blue.")], "rejected": [bot("Green.")]},
    {"prompt": [user("Hi"), bot("<think>\nhmm\n</think>\n\nHello!"), user("Sky?")],  # Qwen3 strips this block
     "chosen": [bot("<think>\nlook up\n</think>\n\nBlue.")], "rejected": [bot("Green.")]},
    {"prompt": [user("Sky?")], "chosen": [bot(" Blue. ")], "rejected": [bot("\nGreen.")]},  # Llama-3, Gemma trim
    {"prompt": [user("Sky?")], "chosen": [bot("Blue.")], "rejected": [bot("Green.")],
     "chat_template_kwargs": {"enable_thinking": False}},
]


def _rows_for(style: str, rows: list[dict]) -> list[dict]:
    """Gemma's template refuses a system turn (in TRL and preflab alike): leave those rows out for it."""
    return [r for r in rows if style != "gemma" or all(m["role"] != "system" for m in r["prompt"])]


def _trl(trainer: str, rows: list[dict], tok, **config) -> list[dict]:
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    cls, cfg = {"dpo": (DPOTrainer, DPOConfig), "kto": (KTOTrainer, KTOConfig), "sft": (SFTTrainer, SFTConfig),
                "reward": (RewardTrainer, RewardConfig)}[trainer]
    args = cfg(output_dir="unused", report_to=[], max_length=None, bf16=False, use_cpu=True, **config)
    me = types.SimpleNamespace(_tokenizer=tok, calculate_KL=False, chat_template=None, completion_only_loss=True,
                                 desirable_weight=1.0, undesirable_weight=1.0)
    extra = (False, None) if trainer == "sft" else ()
    return list(cls._prepare_dataset(me, datasets.Dataset.from_list(rows), tok, args, *extra, "train"))


@pytest.mark.slow
@pytest.mark.parametrize("style", sorted(TOKENS))
def test_token_ids_equal_trls_trainers_for_each_familys_template(style):
    tok = family_tokenizer(style)
    for rows in (TEXT_PAIRS, _rows_for(style, CHAT_PAIRS)):
        examples, _ = load_rows(datasets.Dataset.from_list(rows), kind="pairwise")
        pairs, _ = tokenize_pairs(examples, tok, max_length=None)
        ours = [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]
        theirs = [(t["prompt_ids"], t["chosen_ids"], t["rejected_ids"]) for t in _trl("dpo", rows, tok)]
        assert ours == theirs, style
        # reward models score [prompt | response] whole: TRL's chosen_ids / rejected_ids
        reward = [(t["chosen_ids"], t["rejected_ids"]) for t in _trl("reward", rows, tok)]
        assert [(p + c, p + r) for p, c, r in ours] == reward, style
        # KTO (unpaired) and SFT prompt-completion rows: the chosen side as the completion
        unpaired = [{"prompt": r["prompt"], "completion": r["chosen"], "label": True,
                     **{k: v for k, v in r.items() if k == "chat_template_kwargs"}} for r in rows]
        examples, _ = load_rows(datasets.Dataset.from_list(unpaired), kind="unpaired")
        ours_kto = [(x.prompt_ids, x.completion_ids) for x in tokenize_unpaired(examples, tok, max_length=None)[0]]
        assert ours_kto == [(t["prompt_ids"], t["completion_ids"]) for t in _trl("kto", unpaired, tok)], style
        assert ours_kto == [(p, c) for p, c, _ in ours]
        plain = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows if "chat_template_kwargs" not in r]
        cfg = types.SimpleNamespace(completion_only_loss=True, max_length=None)
        for row, t in zip(plain, _trl("sft", plain, tok)):
            item, _ = tokenize_sft_row(0, row, tok, cfg, TokenizeReport())
            loss_from = t["labels"].index(next(x for x in t["labels"] if x != -100))
            assert (item.prompt_ids + item.completion_ids, len(item.prompt_ids)) == (t["input_ids"], loss_from)
    # SFT language-modeling rows: text (bos where the tokenizer adds it, eos) and whole conversations
    lm = [{"text": "The sky is blue."}, {"messages": [user("Hi"), bot("Hello!"), user("Sky?"), bot("Blue.")]}]
    for row in lm:
        item, _ = tokenize_sft_row(0, row, tok, types.SimpleNamespace(completion_only_loss=True, max_length=None),
                                   TokenizeReport())
        assert item.prompt_ids + item.completion_ids == _trl("sft", [row], tok)[0]["input_ids"], (style, row)


@pytest.mark.slow
def test_a_token_across_the_boundary_is_said_with_how_it_differs_from_trl():
    """'The cat sat on the ' + 'mat': the byte-level tokenizer merges ' mat'. TRL cuts the prompt before the space
    and scores ' mat'; preflab keeps the prompt's ids (as the model sees the prompt at inference) and says so."""
    tok = family_tokenizer("chatml")
    row = {"prompt": "The cat sat on the ", "chosen": "mat", "rejected": "park"}
    examples, _ = load_rows(datasets.Dataset.from_list([row]), kind="pairwise")
    (pair,), report = tokenize_pairs(examples, tok, max_length=None)
    (theirs,) = _trl("dpo", [row], tok)
    assert tok.decode(pair.prompt_ids) == "The cat sat on the "
    assert tok.decode(theirs["prompt_ids"]) == "The cat sat on the"
    assert pair.prompt_ids + pair.chosen_ids != theirs["prompt_ids"] + theirs["chosen_ids"]  # ' ' + 'mat' vs ' mat'
    assert report.boundary_merged == 1
    assert "TRL 1.16 instead moves the prompt's last tokens into the response" in report.summary()


def test_a_template_whose_prompt_is_not_a_prefix_names_where_they_part():
    """DeepSeek-R1-Distill's generation prompt opens '<think>\\n', which the rendered conversation drops: a bad row
    (TRL 1.16 cuts at the common prefix with a warning) whose message shows both texts from where they part."""
    from preflab.errors import DataError

    tok = family_tokenizer("chatml")
    tok.chat_template = chat_template("deepseek_r1_distill")
    row = {"prompt": [user("Sky?")], "chosen": [bot("Blue.")], "rejected": [bot("Green.")]}
    examples, _ = load_rows(datasets.Dataset.from_list([row]), kind="pairwise")
    with pytest.raises(DataError, match=r"field 'chosen'.*the prompt alone has '<think>\\n', prompt \+ response has "
                                        r"'Blue\..*TRL 1\.16 would cut"):
        tokenize_pairs(examples, tok, max_length=None)


@pytest.mark.parametrize("style", ["chatml", "endoftext", "llama3"])
def test_hand_built_text_prompts_start_like_the_text_rows(style):
    """Recipes that encode prompts by hand (DSTC, iTool, OTC, PRO, RPS, the ladder) start them as the text rows do:
    bos only where the tokenizer adds it. Before, a Qwen tokenizer (no bos) gave [None, ...], and a GPT-2-style one
    an <|endoftext|> its trained rows no longer have."""
    from preflab.data.examples import PromptExample
    from preflab.data.tokenize import tokenize_prompts
    from preflab.tool_use.dstc import prompt_ids

    tok = family_tokenizer(style)
    (row,), _ = tokenize_prompts([PromptExample(0, "def add(a, b):", {})], tok)
    assert prompt_ids(tok, ["def add(a, b):"]) == [row.prompt_ids] == [tok("def add(a, b):")["input_ids"]]
