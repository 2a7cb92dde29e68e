"""A hand-written GRPO / online DPO config gets TRL 1.16's defaults for what it leaves out (GRPOConfig: beta 0.0,
num_generations 8, max_completion_length 512; OnlineDPOConfig: max_new_tokens 64, temperature 0.9). Before, the
GRPO family took TrainConfig's beta 0.1 (a KL term TRL does not add), 4 generations and 16 new tokens."""
from pathlib import Path

import pytest
import yaml

from preflab.config import config_from_dict, load_config
from preflab.config_trl import TRL_ONLINE_DEFAULTS

ONLINE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "task": "online", "max_steps": 2}
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("trainer", ["grpo", "dapo", "dr_grpo", "bnpo", "gspo"])
def test_grpo_family_takes_trls_defaults_where_the_config_is_silent(trainer):
    cfg = config_from_dict({**ONLINE, "trainer": trainer})
    assert (cfg.beta, cfg.num_generations, cfg.max_completion_length) == (0.0, 8, 512)
    objective = cfg.objective()
    assert objective.beta == 0.0 and objective.needs_reference is False  # TRL loads no reference at beta 0
    cfg = config_from_dict({**ONLINE, "trainer": trainer, "beta": 0.04, "num_generations": 4,
                            "max_completion_length": 16})
    assert (cfg.beta, cfg.num_generations, cfg.max_completion_length) == (0.04, 4, 16)
    assert cfg.objective().needs_reference is True


def test_online_dpo_takes_onlinedpoconfigs_defaults():
    for raw in ({**ONLINE}, {**ONLINE, "trainer": "online_dpo"}):
        cfg = config_from_dict(raw)
        assert (cfg.beta, cfg.max_completion_length, cfg.temperature) == (0.1, 64, 0.9)
    cfg = config_from_dict({**ONLINE, "max_new_tokens": 24, "temperature": 1.0})
    assert (cfg.max_completion_length, cfg.temperature) == (24, 1.0)


def test_recipes_without_a_trl_config_keep_preflabs_defaults():
    """(beta: sppo's own 0.001, as offline loss_type: sppo; preflab.objectives._own_beta)"""
    cfg = config_from_dict({**ONLINE, "trainer": "sppo"})
    assert (cfg.beta, cfg.num_generations, cfg.max_completion_length, cfg.temperature) == (0.001, 4, 16, 1.0)


def test_example_recipes_set_every_key_whose_default_is_trls():
    """The online table (docs/online.md) was measured with these values; a recipe that left one out would now run with
    TRL's (e.g. 512 new tokens instead of 16) and its row would no longer hold."""
    checked = 0
    for path in sorted(EXAMPLES.glob("**/*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if not isinstance(raw, dict) or raw.get("task") != "online" or raw.get("online_task") == "game":
            continue
        wanted = TRL_ONLINE_DEFAULTS.get(raw.get("trainer", "online_dpo"), {})
        assert [k for k in wanted if k not in raw] == [], path
        cfg = load_config(path)
        assert all(getattr(cfg, k) == raw[k] for k in wanted), path
        checked += bool(wanted)
    assert checked >= 8  # grpo, dapo, dr_grpo, bnpo, gspo, online_dpo, maxmin (online_dpo), vision_r1 (grpo)


def test_saved_grpoconfig_round_is_trls_round():
    """GRPOConfig's generation_batch_size counts a round's completions (per_device_train_batch_size x processes x
    steps_per_generation); it was read as preflab's prompts per generate() call, and the round was 32 prompts."""
    trl = pytest.importorskip("trl")
    for fields, prompts in (({}, 1), ({"steps_per_generation": 4}, 4), ({"generation_batch_size": 64}, 8),
                            ({"num_generations": 4, "per_device_train_batch_size": 8, "steps_per_generation": 2}, 4)):
        raw = trl.GRPOConfig(output_dir="out", bf16=False, **fields).to_dict()
        raw.pop("loss_type")
        cfg = config_from_dict({**ONLINE, **raw, "trainer": "dapo", "max_steps": 2})
        assert cfg.prompts_per_generation * cfg.num_generations == raw["generation_batch_size"]
        assert (cfg.prompts_per_generation, cfg.steps_per_generation) == (prompts, raw["steps_per_generation"])
        assert cfg.generation_batch_size == 64  # generate() calls: preflab's size
    # a hand-written config keeps preflab's meaning of generation_batch_size (prompts per generate() call)
    cfg = config_from_dict({**ONLINE, "trainer": "grpo", "generation_batch_size": 2})
    assert (cfg.generation_batch_size, cfg.prompts_per_generation) == (2, 32)


def test_saved_grpoconfig_steps_per_generation_counts_micro_batches():
    """GRPOConfig's steps_per_generation counts micro-batches per round (one optimizer step per round by default:
    it defaults to gradient_accumulation_steps); preflab's counts optimizer steps, so a dump's 8 with accumulation 4
    is 2 here (a planted bug that kept 8, four times as many optimizer steps per round, survived the tests)."""
    trl = pytest.importorskip("trl")
    raw = trl.GRPOConfig(output_dir="out", bf16=False, gradient_accumulation_steps=4, steps_per_generation=8).to_dict()
    raw.pop("loss_type")
    cfg = config_from_dict({**ONLINE, **raw, "trainer": "dapo", "max_steps": 2})
    assert (cfg.steps_per_generation, cfg.gradient_accumulation_steps) == (2, 4)
    assert cfg.prompts_per_generation * cfg.num_generations == raw["generation_batch_size"] == 64


def test_saved_rlooconfig_is_trainer_rloo():
    """Before: refused (RLOO was not a recipe); before that, with trainer: grpo it trained GRPO, RLOO's own fields
    accepted at their defaults without a word. Now a saved RLOOConfig runs as trainer rloo with TRL's values, its
    round (generation_batch_size: completions) in preflab's terms; another trainer or task is refused."""
    trl = pytest.importorskip("trl")
    from preflab.errors import ConfigError

    raw = trl.RLOOConfig(output_dir="out", bf16=False, normalize_advantages=True, reward_clip_range=(-1.0, 2.0),
                         steps_per_generation=4).to_dict()
    cfg = config_from_dict({**ONLINE, **raw, "max_steps": 2})
    assert (cfg.trainer, cfg.loss_type, cfg.beta, cfg.num_generations) == ("rloo", "rloo", 0.05, 2)
    assert cfg.prompts_per_generation * cfg.num_generations == raw["generation_batch_size"] == 32
    objective = cfg.objective()
    assert (objective.normalize_advantages, list(objective.reward_clip_range)) == (True, [-1.0, 2.0])
    assert objective.needs_reference                                   # beta 0.05: the KL penalty in the reward
    with pytest.raises(ConfigError, match="saved TRL RLOOConfig, which trains RLOO .* names trainer 'grpo'. Set "
                                          "trainer: rloo"):
        config_from_dict({**ONLINE, **raw, "trainer": "grpo", "max_steps": 2})
    with pytest.raises(ConfigError, match="saved TRL RLOOConfig .* Set task: online"):
        config_from_dict({**{k: v for k, v in ONLINE.items() if k != "task"}, **raw, "max_steps": 2})


def test_rloo_takes_rlooconfigs_defaults_and_its_options_are_its_own():
    from preflab.errors import ConfigError

    cfg = config_from_dict({**ONLINE, "trainer": "rloo"})
    assert (cfg.beta, cfg.num_generations, cfg.max_completion_length, cfg.learning_rate) == (0.05, 2, 512, 1e-6)
    with pytest.raises(ConfigError, match="normalize_advantages is read by trainer rloo, not by trainer 'grpo'"):
        config_from_dict({**ONLINE, "trainer": "grpo", "normalize_advantages": True})
    with pytest.raises(ConfigError, match="scale_rewards is read by the GRPO family"):
        config_from_dict({**ONLINE, "trainer": "rloo", "scale_rewards": "batch"})
    with pytest.raises(ConfigError, match="trainer 'rloo' trains its own objective 'rloo' .* Leave loss_type out"):
        config_from_dict({**ONLINE, "trainer": "rloo", "loss_type": "grpo"})
    with pytest.raises(ConfigError, match="reward_clip_range"):
        config_from_dict({**ONLINE, "trainer": "rloo", "reward_clip_range": [1.0, -1.0]})
    cfg = config_from_dict({**ONLINE, "trainer": "rloo", "epsilon_high": 0.28, "reward_clip_range": [0, 1]})
    assert (cfg.objective().epsilon_high, list(cfg.objective().reward_clip_range)) == (0.28, [0, 1])


# TRL's defaults per config (hand-copied from TRL 1.16: GRPOConfig beta 0.0, num_generations 8, max_completion_length
# 512; RLOOConfig 0.05, 2, 512; OnlineDPOConfig max_new_tokens 64, temperature 0.9; OnlineDPOTrainer's 2 samples;
# SFTConfig / RewardConfig learning_rate 2e-5 / 1e-4), and TrainConfig's field defaults that the Python API gave
# before (beta 0.1, num_generations 4, max_completion_length 16 once check_online ran, temperature 1.0, lr 1e-6)
TRL_RESOLVED = {
    **{t: {"beta": 0.0, "num_generations": 8, "max_completion_length": 512}
       for t in ("grpo", "dapo", "dr_grpo", "bnpo", "gspo", "cispo", "sapo", "luspo", "vespo")},
    "rloo": {"beta": 0.05, "num_generations": 2, "max_completion_length": 512},
    "online_dpo": {"max_completion_length": 64, "temperature": 0.9, "num_generations": 2},
}
PRE_FIX = {"beta": 0.1, "num_generations": 4, "max_completion_length": 16, "temperature": 1.0, "learning_rate": 1e-6}
EXPLICIT = {"beta": 0.3, "num_generations": 3, "max_completion_length": 7, "temperature": 0.7, "learning_rate": 3e-4}


def _python_and_yaml(tmp_path, options):
    """The config built in Python (TrainConfig(...)) and the one loaded from a YAML file of the same options."""
    from preflab.config import TrainConfig

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(options))
    return TrainConfig(**options), load_config(path)


def _fields(cfg) -> dict:
    import dataclasses

    return {**dataclasses.asdict(cfg), "written_options": cfg.written_options}


@pytest.mark.parametrize("trainer", sorted(TRL_RESOLVED))
def test_python_api_takes_trls_online_defaults_as_the_yaml_does(trainer, tmp_path):
    """TrainConfig(task="online", trainer="grpo") trained at beta 0.1 (and 4 generations of 16 tokens) where the same
    YAML trained at GRPOConfig's beta 0.0: TRL's defaults were applied by the file loader only. Now both paths go
    through TrainConfig.__post_init__ (config_trl.apply_trl_defaults): equal field by field, each TRL default away from
    the value the Python API gave before; an explicit value wins in both."""
    options = {**ONLINE, "trainer": trainer}
    python, from_yaml = _python_and_yaml(tmp_path, options)
    assert _fields(python) == _fields(from_yaml)
    wanted = TRL_RESOLVED[trainer]
    assert {k: getattr(python, k) for k in wanted} == wanted
    assert all(PRE_FIX[k] != v for k, v in wanted.items())
    assert python.objective().beta == python.beta  # the objective trains at the resolved beta
    # a run's config.yaml records the resolved values: loading it (a saved config: every option given) keeps them
    saved = tmp_path / "config.yaml"
    python.save(saved)
    assert {k: getattr(load_config(saved), k) for k in wanted} == wanted
    # the user's value wins in both paths, whether or not it is TrainConfig's own default
    for explicit in (EXPLICIT, PRE_FIX):
        given = {k: explicit[k] for k in wanted}
        python, from_yaml = _python_and_yaml(tmp_path, {**options, **given})
        assert _fields(python) == _fields(from_yaml)
        assert {k: getattr(python, k) for k in wanted} == given
        python.save(saved)  # a saved config has no written options: its values are kept, not TRL's defaults again
        assert {k: getattr(load_config(saved), k) for k in wanted} == given


@pytest.mark.parametrize("task,rate", [("sft", 2e-5), ("reward", 1e-4)])
def test_python_api_takes_trls_task_learning_rate_as_the_yaml_does(task, rate, tmp_path, capsys):
    """SFTConfig's / RewardConfig's learning_rate for a config without one: TrainConfig(task="reward") trained at the
    DPO 1e-6 where the YAML trained at 1e-4. The note is said once for either path."""
    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "task": task}
    python, from_yaml = _python_and_yaml(tmp_path, base)
    assert _fields(python) == _fields(from_yaml)
    assert python.learning_rate == rate != PRE_FIX["learning_rate"]
    assert capsys.readouterr().err.count(f"task: {task} without learning_rate -> learning_rate: {rate:g}") == 2
    for explicit in (EXPLICIT["learning_rate"], PRE_FIX["learning_rate"]):
        python, from_yaml = _python_and_yaml(tmp_path, {**base, "learning_rate": explicit})
        assert python.learning_rate == from_yaml.learning_rate == explicit
        python.save(tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml").learning_rate == explicit
    assert "without learning_rate" not in capsys.readouterr().err


def test_recipes_without_a_trl_config_are_the_same_in_python_and_yaml(tmp_path):
    """sppo has no TRL config: TrainConfig's defaults and its objective's own beta, in both paths."""
    python, from_yaml = _python_and_yaml(tmp_path, {**ONLINE, "trainer": "sppo"})
    assert _fields(python) == _fields(from_yaml)
    assert (python.beta, python.num_generations, python.max_completion_length, python.temperature) == (
        0.001, 4, 16, 1.0)
