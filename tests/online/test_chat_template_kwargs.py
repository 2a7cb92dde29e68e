"""TRL GRPOConfig's chat_template_kwargs (task: online, online_task dataset): every conversational prompt is rendered
as TRL's GRPOTrainer renders it, apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
**chat_template_kwargs), in the run's training prompts and held-out prompts alike; a row's own chat_template_kwargs
column adds to them; the rows' columns (what reward functions receive) stay the file's; a reward model judge, which
TRL would also render with them, is refused, as are other tasks and prompt sources."""
import sys
from pathlib import Path

import pytest

from preflab.config import config_from_dict
from preflab.data.report import RowProblem
from preflab.errors import ConfigError, DataError
from preflab.loops.rollout import prepare_prompts
from preflab.models.tiny import CHAT_TEMPLATE, tiny_tokenizer
from preflab.online.tasks import Task

sys.path.insert(0, str(Path(__file__).parent))
from test_online_run import e_judge, tiny_cfg  # noqa: E402

# the tiny template with a Qwen3-style switch after the generation prompt
THINKING = CHAT_TEMPLATE.replace("<|assistant|>\n{% endif %}", "<|assistant|>\n{% if enable_thinking is defined and "
                                 "not enable_thinking %}<think></think>{% endif %}{% endif %}")
PROMPTS = [{"prompt": [{"role": "user", "content": "what is two plus three ?"}], "id": 0},
           {"prompt": [{"role": "user", "content": "hello"}], "id": 1,
            "chat_template_kwargs": {"enable_thinking": True}},  # the row's own key wins
           {"prompt": "a text prompt", "id": 2}]  # text: no template
OFF = {"enable_thinking": False}


def _tokenizer(kind="bytelevel"):
    tok = tiny_tokenizer(kind)
    tok.chat_template = THINKING
    return tok


def _trl_prompt_ids(tok, row, kwargs) -> list[int]:
    """TRL 1.16 GRPOTrainer._generate's tokenization of one conversational prompt (text model, no tools)."""
    out = tok.apply_chat_template(conversation=[row["prompt"]], add_generation_prompt=True, tokenize=True,
                                  return_dict=True, **kwargs)
    return list(out["input_ids"][0])


def test_prompt_ids_equal_trls_render_with_the_kwargs():
    tok = _tokenizer()
    rows = prepare_prompts(PROMPTS, tok, chat_template_kwargs=OFF)
    assert rows[0].prompt_ids == _trl_prompt_ids(tok, PROMPTS[0], OFF)
    assert rows[1].prompt_ids == _trl_prompt_ids(tok, PROMPTS[1], {"enable_thinking": True})
    assert rows[0].prompt_ids != _trl_prompt_ids(tok, PROMPTS[0], {})  # the switch changed the tokens
    assert "<think></think>" in tok.decode(rows[0].prompt_ids) and "<think>" not in tok.decode(rows[1].prompt_ids)
    assert rows[2].prompt_ids == prepare_prompts(PROMPTS[2:], tok)[0].prompt_ids  # text prompts as before
    # the columns reward functions receive are the file's: no chat_template_kwargs added to a row without one
    assert [r.columns for r in rows] == [{"id": 0}, {"id": 1, "chat_template_kwargs": {"enable_thinking": True}},
                                        {"id": 2}]


def test_a_bad_row_column_is_still_reported_with_its_row():
    bad = [dict(PROMPTS[0], chat_template_kwargs="not json")]
    with pytest.raises((RowProblem, DataError, ConfigError), match="chat_template_kwargs"):
        prepare_prompts(bad, _tokenizer(), chat_template_kwargs=OFF)


def test_the_run_renders_its_prompts_with_the_kwargs(tmp_path):
    """An online run built from a config with chat_template_kwargs (JSON text, as TRL's command line gives it):
    its training prompts are TRL's tokens."""
    from preflab.models.tiny import tiny_causal_lm
    from preflab.online.run import OnlineRun

    cfg = tiny_cfg(tmp_path, chat_template_kwargs='{"enable_thinking": false}')
    assert cfg.chat_template_kwargs == OFF
    tok = _tokenizer("char")
    run = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                    task=Task(PROMPTS[:1] * 6, [e_judge]))
    assert run.rows[0].prompt_ids == _trl_prompt_ids(_tokenizer("char"), PROMPTS[0], OFF)


def test_refused_where_it_would_not_be_trls(tmp_path):
    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}
    with pytest.raises(ConfigError, match="chat_template_kwargs only applies to task: online"):
        config_from_dict({**base, "chat_template_kwargs": OFF})
    with pytest.raises(ConfigError, match="chat_template_kwargs .*online_task: dataset"):
        config_from_dict({**base, "task": "online", "max_steps": 2, "online_task": "demo",
                          "chat_template_kwargs": OFF})
    assert config_from_dict({**base, "task": "online", "max_steps": 2, "reward_funcs": "demo_true_reward",
                             "chat_template_kwargs": {}}).chat_template_kwargs is None  # GRPOConfig's empty default
    from preflab.online.tasks import refuse_template_kwargs_with_model_judges

    judge = tmp_path / "rm"
    judge.mkdir()
    cfg = config_from_dict({**base, "task": "online", "max_steps": 2, "reward_funcs": [str(judge)],
                            "chat_template_kwargs": OFF})
    with pytest.raises(ConfigError, match="renders a reward model's conversations with them too"):
        refuse_template_kwargs_with_model_judges(cfg)
