"""User trial 21 ("the memory-constrained, long-sequence user", from the user docs only): the findings it fixed, each
pinned with the value or message the old code gave: float16 mixed precision on a CPU (accelerate ran it in float32
without a word), the advice for a prompt cut to max_prompt_length that still fills max_length, bitsandbytes' CPU-kernel
warning on every LoRA command, padding_free beside a layout that pads."""
import json

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.launch import check_fp16_on_cpu

ROWS = [{"prompt": f"count {i} :", "chosen": " one two three", "rejected": " nine"} for i in range(8)]


def _config(tmp_path, **options):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                             "per_device_train_batch_size": 4, "max_steps": 1, "save_steps": 0,
                             "output_dir": str(tmp_path / "run"), **options})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is of CPU runs")
@pytest.mark.parametrize("option, named", [({"fp16": True}, "fp16: true"), ({"dtype": "float16"}, "dtype: float16")])
def test_fp16_mixed_precision_on_a_cpu_is_refused_before_anything_loads(tmp_path, option, named):
    """Before: `preflab train ... fp16=true` on a CPU logged the float32 run's numbers to the last digit (loss,
    grad_norm 0.5553123950958252 on the quickstart's first step, the same as without fp16): accelerate's
    Accelerator turns no float16 autocast on off the GPU (native_amp false), and nothing said so."""
    from preflab.loops.offline import Trainer

    with pytest.raises(ConfigError) as caught:
        Trainer(_config(tmp_path, **option))
    message = str(caught.value)
    assert message.startswith(f"{named}: float16 mixed precision runs on a GPU only")
    assert "bf16: true" in message and "load_dtype: float16" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_fp16_check_leaves_bfloat16_float16_weights_and_gpus_alone(tmp_path):
    """bf16 autocast runs on the CPU, load_dtype: float16 stores the weights in float16 (no autocast), and on a GPU
    accelerate runs float16 autocast: none of them is refused."""
    for option in ({"bf16": True}, {"load_dtype": "float16"}, {}):
        check_fp16_on_cpu(_config(tmp_path, **option), on_cpu=True)
    check_fp16_on_cpu(_config(tmp_path, fp16=True), on_cpu=False)


def test_a_prompt_cut_to_max_prompt_length_that_fills_max_length_names_both_limits():
    """Before: `max_length=256 max_prompt_length=300` stopped on the first long row with "... Shorten the prompt,
    raise max_length, set max_prompt_length, ..." although max_prompt_length was set: the row's prompt, cut to
    300 tokens, still filled max_length. Now the advice names the two limits; without max_prompt_length it is the
    old advice."""
    from preflab.data.examples import PairExample
    from preflab.data.tokenize import tokenize_pairs
    from preflab.errors import DataError
    from preflab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    rows = [PairExample(row_id=0, prompt="ab " * 30, chosen="Yes", rejected="No", extras={})]
    with pytest.raises(DataError) as caught:
        tokenize_pairs(rows, tok, max_length=20, max_prompt_length=25)
    assert "the prompt is 25 tokens, which leaves no room for a response within max_length=20" in str(caught.value)
    assert "max_prompt_length=25 is not below max_length=20" in str(caught.value)
    with pytest.raises(DataError) as caught:
        tokenize_pairs(rows, tok, max_length=20)
    assert "max_prompt_length=" not in str(caught.value) and "set max_prompt_length" in str(caught.value)
    items, report = tokenize_pairs(rows, tok, max_length=20, max_prompt_length=19)
    assert len(items[0].prompt_ids) == 19 and len(items[0].chosen_ids) == 1 and report.response_truncated == 1


def test_bitsandbytes_cpu_kernel_warning_is_hidden_for_a_command_and_put_back_after(monkeypatch, caplog):
    """Before: every LoRA `preflab train` / `preflab eval` on a CPU printed bitsandbytes' "Failed to load CPU
    gemm_4bit_forward from kernels-community ... pip install kernels" (peft imports bitsandbytes, whose CPU backend
    tries to fetch a 4-bit kernel from the hub): a failure of a 4-bit path the run never takes."""
    import logging

    import preflab.cli as cli
    from preflab.quiet import BITSANDBYTES_CPU_LOGGER

    logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    before = logger.level
    seen = []

    def command(args):
        with caplog.at_level(logging.WARNING):
            logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: no network")
        seen.append(logger.getEffectiveLevel())
        return 0

    monkeypatch.setattr(cli, "_handler", lambda args: command)
    assert cli.main(["objectives"]) == 0
    assert seen == [logging.ERROR]
    assert not [r for r in caplog.records if "gemm_4bit_forward" in r.getMessage()]
    assert logger.level == before  # put back after the command


@pytest.mark.parametrize("layout", ["padded", "prefix_shared"])
def test_padding_free_with_a_layout_that_pads_is_refused(tmp_path, layout):
    """Before: `padding_free=true layout=padded` printed "padding_free: true, with layout: padded as given." and
    trained padded rows: TRL's silent fallback to padding (huggingface/trl#2469) with a note. A padding-free layout
    beside it is kept; padding_free alone is prefix_packed."""
    with pytest.raises(ConfigError, match=f"padding_free: true asks for rows without padding, and layout: {layout} "
                                          "pads each row"):
        _config(tmp_path, padding_free=True, layout=layout)
    assert _config(tmp_path, padding_free=True, layout="packed").layout == "packed"
    assert _config(tmp_path, padding_free=True).layout == "prefix_packed"
    assert _config(tmp_path, padding_free=False, layout="padded").layout == "padded"
