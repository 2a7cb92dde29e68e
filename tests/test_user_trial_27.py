"""User trial 27: an engineer migrating a TRL 1.16 codebase (DPOConfig / KTOConfig / ORPOConfig / CPOConfig /
RewardConfig built in Python, `DPOTrainer(..., eval_dataset=...)`, callbacks, TRL's dataset formats).
docs/trials/trial-27.md has the findings."""
import copy
import types

import pytest

from preflab.config import config_from_dict
from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs
from preflab.loops.trl_experimental_tokens import experimental_tokens_note, token_differences
from preflab.models.tiny import tiny_tokenizer

BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}
ROWS = [{"prompt": "what is 2+3?", "chosen": " five", "rejected": " six or seven"},
        {"chosen": "Q: sky? A: blue", "rejected": "Q: sky? A: green"},   # implicit text prompt
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go"}]}]


def _no_bos_tokenizer():
    """A tokenizer with a bos token that `tokenizer(text)` does not add (GPT-2, GPT-NeoX, OLMo's kind)."""
    from tokenizers import processors

    tok = tiny_tokenizer("bytelevel")
    tok._tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    assert tok("a")["input_ids"][:1] != [tok.bos_token_id] and tok.bos_token_id is not None
    return tok


def _trl_ids(trainer_cls, tok, row):
    """TRL 1.16's experimental trainer's (prompt, chosen, rejected) ids for `row`: its own maybe_extract_prompt,
    maybe_apply_chat_template and tokenize_row (called unbound on a stand-in with the attributes it reads)."""
    trl_data = pytest.importorskip("trl.data_utils")
    maybe_apply_chat_template, maybe_extract_prompt = trl_data.maybe_apply_chat_template, trl_data.maybe_extract_prompt

    st = types.SimpleNamespace(processing_class=tok, is_encoder_decoder=False, max_length=1024)
    st.build_tokenized_answer = types.MethodType(trainer_cls.build_tokenized_answer, st)
    feature = trainer_cls.tokenize_row(st, maybe_apply_chat_template(maybe_extract_prompt(copy.deepcopy(row)), tok))
    n = len(feature["prompt_input_ids"])
    return feature["prompt_input_ids"], feature["chosen_input_ids"][n:], feature["rejected_input_ids"][n:]


def _as_trl_experimental(pair, example, tok):
    """preflab's ids with the differences the note names applied: bos in front of a text prompt, eos after a
    conversational response that does not end with it."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    prompt, responses = list(pair.prompt_ids), [list(pair.chosen_ids), list(pair.rejected_ids)]
    if not isinstance(example.prompt, list):
        prompt = prompt if prompt[:1] == [bos] else [bos] + prompt
    else:
        responses = [ids if ids[-1:] == [eos] else ids + [eos] for ids in responses]
    return prompt, *responses


@pytest.mark.parametrize("adds_bos", [True, False])
@pytest.mark.parametrize("trainer", ["orpo", "cpo"])
def test_the_noted_differences_are_exactly_how_trls_experimental_trainers_tokenize(trainer, adds_bos):
    """The ids differ from TRL's ORPOTrainer / CPOTrainer by exactly what the note counts: bos before a text prompt
    (only where the tokenizer does not add it to text) and one eos after a conversational response."""
    cls = (pytest.importorskip("trl.experimental.orpo.orpo_trainer").ORPOTrainer if trainer == "orpo" else
           pytest.importorskip("trl.experimental.cpo.cpo_trainer").CPOTrainer)
    tok = tiny_tokenizer("bytelevel") if adds_bos else _no_bos_tokenizer()
    examples, _ = load_rows(copy.deepcopy(ROWS), kind="pairwise")
    pairs, _ = tokenize_pairs(examples, tok)
    for row, example, pair in zip(ROWS, examples, pairs):
        assert tuple(map(list, _trl_ids(cls, tok, row))) == _as_trl_experimental(pair, example, tok)
    counts = token_differences(examples, pairs, tok)
    assert counts == {"bos": 0 if adds_bos else 2, "eos": 2, "turn_cut": 0}
    differing = sum(tuple(map(list, _trl_ids(cls, tok, r))) != (p.prompt_ids, p.chosen_ids, p.rejected_ids)
                    for r, p in zip(ROWS, pairs))
    assert differing == (1 if adds_bos else 3)


def test_a_run_of_an_experimental_trl_loss_says_how_many_rows_differ(capsys):
    """orpo / simpo runs print the note with the counts; dpo (TRL's stable DPOTrainer tokenizes as preflab) does not."""
    from preflab.loops.prepare import prepare_examples

    tok = _no_bos_tokenizer()
    for loss_type, said in (("orpo", "TRL's experimental ORPOTrainer"), ("simpo", "TRL's experimental CPOTrainer"),
                            ("sigmoid", None)):
        cfg = config_from_dict({**BASE, "loss_type": loss_type})
        cfg.dataset_name = copy.deepcopy(ROWS)
        prepare_examples(cfg, tok)
        out = capsys.readouterr().out
        if said is None:
            assert "experimental" not in out
            continue
        assert said in out
        assert "2 text prompt(s) start without the bos '<s>'" in out
        assert "2 conversational response(s) end with the chat template's end of turn" in out


def test_a_response_opening_with_a_user_turn_is_counted_for_the_cut():
    examples, _ = load_rows([{"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                              "chosen": [{"role": "user", "content": "and?"}, {"role": "assistant", "content": "ok"}],
                              "rejected": [{"role": "user", "content": "and?"}, {"role": "assistant", "content": "no"}]}],
                            kind="pairwise")
    tok = tiny_tokenizer("bytelevel")
    pairs, _ = tokenize_pairs(examples, tok)
    assert token_differences(examples, pairs, tok)["turn_cut"] == 1
    objective = config_from_dict({**BASE, "loss_type": "orpo"}).objective()
    assert "1 conversational row(s) have a response opening with another turn" in \
        experimental_tokens_note(objective, examples, pairs, tok)


# --- TRL's DPOConfig(eval_strategy=...) beside DPOTrainer(eval_dataset=...) from Python -------------------------------

def _text_rows(n, seed):
    import random

    rng = random.Random(seed)
    words = ["red", "blue", "cat", "dog", "sun", "sea", "one", "two"]
    return [{"prompt": f"q {rng.choice(words)} {i}?", "chosen": f" {rng.choice(words)} {rng.choice(words)}",
             "rejected": f" {rng.choice(words)}"} for i in range(n)]


def _eval_rows_of(out_dir):
    import json

    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("eval_") or k == "step"} for r in rows if "eval_loss" in r]


def test_a_saved_dpoconfig_with_eval_strategy_and_python_eval_rows_evaluates_as_the_same_rows_in_a_file(
        tmp_path, capsys):
    """Before: `DPOConfig(eval_strategy="steps", eval_steps=2).to_dict()` was refused twice (do_eval, then
    eval_strategy: "needs an eval set"), and naming the rows with eval_dataset_name was refused as "two eval sets".
    Now any eval_dataset_name names the Python eval rows (a note says so), and the run evaluates at TRL's steps (2
    and 4 of 4) with the same values as the same rows read from a file under that name."""
    import json

    from preflab.errors import ConfigError
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm

    trl = pytest.importorskip("trl")
    train, held = _text_rows(8, 0), _text_rows(4, 1)
    dump = trl.DPOConfig(output_dir="unused", bf16=False, eval_strategy="steps", eval_steps=2, max_steps=4,
                         per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=2, report_to="none",
                         gradient_checkpointing=False).to_dict()
    with pytest.raises(ConfigError, match=r"add eval_dataset_name: NAME \(any name: beside Trainer\(cfg, "
                                          r"eval_data=rows\) it only names those rows"):
        config_from_dict({**dump, **BASE})
    eval_file = tmp_path / "held.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in held))
    tok = tiny_tokenizer("bytelevel")
    results = []
    for name, eval_data in (("py-eval", held), (str(eval_file), None)):
        out = tmp_path / ("python" if eval_data else "file")
        cfg = config_from_dict({**dump, **BASE, "output_dir": str(out), "eval_dataset_name": name,
                                "disable_tqdm": True, "use_cpu": True})
        policy = tiny_causal_lm(tok, seed=0)
        Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=train,
                eval_data=eval_data).train()
        results.append(_eval_rows_of(out))
        if eval_data is not None:
            assert "eval_dataset_name='py-eval' names the eval rows given from Python" in capsys.readouterr().out
    python_route, file_route = results
    assert [r["step"] for r in python_route] == [2, 4]  # transformers' eval_strategy "steps", eval_steps 2
    assert python_route[0].keys() == file_route[0].keys() and len(python_route) == len(file_route)
    for ours, theirs in zip(python_route, file_route):
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key


def test_python_eval_rows_beside_eval_fraction_are_still_two_eval_sets():
    from preflab.errors import ConfigError
    from preflab.loops.prepare import config_reading_rows

    rows = _text_rows(2, 0)
    with pytest.raises(ConfigError, match="eval_fraction=0.25: two eval sets"):
        config_reading_rows(config_from_dict({**BASE, "eval_fraction": 0.25}), rows, rows)
    reading = config_reading_rows(config_from_dict({**BASE, "eval_dataset_name": "e.jsonl"}), rows, rows)
    assert reading.eval_dataset_name is rows


# --- TRL's CLI: `trl dpo | kto | reward | sft --config x.yaml` -------------------------------------------------------

def _cli_config(argv):
    """The TrainConfig `preflab ARGV` would train, read as the command reads it (no run)."""
    from preflab.cli import _parse, build_parser, trl_command_argv
    from preflab.loops.cli import config_from_args

    return config_from_args(_parse(build_parser(), trl_command_argv(list(argv))))


def _yaml(tmp_path, **keys):
    import yaml

    path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({**BASE, "output_dir": str(tmp_path / "out"), **keys}))
    return str(path)


def test_trls_training_commands_run_as_train_with_their_scripts_setting(tmp_path, capsys):
    """`preflab kto --config x.yaml` (TRL's `trl kto`) trains KTO on a config without loss_type, as TRL's script
    (KTOConfig's loss_type kto); `preflab train` on the same file keeps preflab's default (sigmoid). `dpo` adds
    nothing; `reward` / `sft` set the task; `--config` is the positional CONFIG."""
    plain = _yaml(tmp_path, beta=0.2)
    assert _cli_config(["train", plain]).loss_type == "sigmoid"
    kto = _cli_config(["kto", "--config", plain])
    assert kto.loss_type == "kto" and kto.beta == 0.2
    assert "`preflab kto` (TRL's `trl kto`) trains loss_type=kto" in capsys.readouterr().out
    assert _cli_config(["kto", "--config", _yaml(tmp_path, loss_type="apo_zero_unpaired")]).loss_type == \
        "apo_zero_unpaired"
    assert _cli_config(["kto", "--config", _yaml(tmp_path, loss_type=["kto"])]).loss_type in ("kto", ["kto"])
    assert _cli_config(["dpo", "--config", plain, "beta=0.3"]).beta == 0.3
    assert _cli_config(["train", "--config", plain, "loss_type=ipo"]).loss_type == "ipo"
    bare = _yaml(tmp_path)
    assert _cli_config(["reward", "--config", bare]).task == "reward"
    assert _cli_config(["sft", "--config", bare]).task == "sft"


def test_trls_commands_refuse_what_their_script_would_not_train(tmp_path, capsys):
    from preflab.cli import main
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`preflab kto` runs TRL's `trl kto` script, which trains loss_type: kto "
                                          r"or apo_zero_unpaired; the config writes loss_type: sigmoid"):
        _cli_config(["kto", "--config", _yaml(tmp_path), "loss_type=sigmoid"])
    with pytest.raises(ConfigError, match="two config files"):
        plain = _yaml(tmp_path)
        _cli_config(["train", plain, "--config", plain])
    assert main(["grpo", "--config", "x.yaml"]) == 2
    assert "preflab has no `grpo` command (TRL's `trl grpo`); use `preflab train x.yaml` with task: online and " \
           "trainer: grpo" in capsys.readouterr().err


# --- a saved DPOConfig of every loss type loads ------------------------------------------------------------------------

TRL_DPO_LOSS_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                      "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm", ["sigmoid", "sft"]]


@pytest.mark.parametrize("loss_type", TRL_DPO_LOSS_TYPES, ids=str)
def test_a_saved_dpoconfig_of_every_loss_type_trains_what_the_same_hand_written_config_trains(loss_type):
    """Before: `DPOConfig(loss_type="ipo").to_dict()` (and every loss type but sigmoid, and sigmoid with
    label_smoothing, i.e. cdpo) failed to build its objective with "IPO has no parameter 'ld_alpha'": the dump carries
    TRL's ld_alpha default None. Now the dump's objective gives the loss of the hand-written config (loss_type and
    the same label_smoothing only) on the same log-probs."""
    import torch

    from preflab.objectives import PairBatch

    trl = pytest.importorskip("trl")
    eps = {"exo_pair": 1e-3, "robust": 0.1}.get(loss_type if isinstance(loss_type, str) else "", 0.0)
    dump = trl.DPOConfig(output_dir="unused", bf16=False, loss_type=loss_type, label_smoothing=eps).to_dict()
    from_dump = config_from_dict({**dump, **BASE}).objective()
    by_hand = config_from_dict({**BASE, "loss_type": loss_type, **({"label_smoothing": eps} if eps else {})}).objective()
    g = torch.Generator().manual_seed(0)
    sums = [-10 * torch.rand(4, generator=g) for _ in range(4)]
    batch = PairBatch.from_sums(*sums)
    assert float(from_dump(batch).loss) == pytest.approx(float(by_hand(batch).loss), abs=1e-7)
