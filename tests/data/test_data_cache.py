"""tokenize_cached: a second call hits the JSON cache; changed settings, tokenizer or data miss it."""
import json

import pytest

import preflab.data.cache as cache
from preflab.data.cache import tokenize_cached
from preflab.data.examples import PairExample, PromptExample
from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs
from preflab.errors import ConfigError
from preflab.models.tiny import tiny_tokenizer

EXAMPLES = [PairExample(0, "the cat sat on ", "the mat", " a dog", {"margin": 0.5, "tags": ["a"]}),
            PairExample(1, [{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "hello"}],
                        [{"role": "assistant", "content": "bye"}], {}),
            PairExample(2, "x" * 40, " a", " b", {})]


def test_second_call_hits_and_changes_miss(tmp_path, monkeypatch):
    tok = tiny_tokenizer("bytelevel")
    kw = dict(max_length=32, on_bad_row="skip", source="train.jsonl")
    first, report1 = tokenize_cached(EXAMPLES, tok, cache_dir=tmp_path, **kw)
    assert (first, report1.to_dict()) == (lambda r: (r[0], r[1].to_dict()))(tokenize_pairs(EXAMPLES, tok, **kw))
    assert not report1.from_cache and report1.skipped == {"prompt_fills_max_length": 1}
    (path,) = tmp_path.glob("tokenized-pairs-*.json")
    blob = json.loads(path.read_text())  # plain JSON, no pickle
    assert blob["format"] == cache.CACHE_FORMAT and len(blob["items"]) == 2

    calls = []
    real = cache.tokenize_indexed
    monkeypatch.setattr(cache, "tokenize_indexed", lambda *a, **k: calls.append(1) or real(*a, **k))
    second, report2 = tokenize_cached(EXAMPLES, tok, cache_dir=tmp_path, **kw)
    assert calls == [] and report2.from_cache and "(from cache)" in report2.summary()
    assert second == first and report2.skipped == report1.skipped

    tokenize_cached(EXAMPLES, tok, cache_dir=tmp_path, **dict(kw, max_length=33))  # a setting changed
    assert calls == [1]
    tok.chat_template = tok.chat_template.replace("<|assistant|>", "<|assistant|> ")  # the template changed
    tokenize_cached(EXAMPLES, tok, cache_dir=tmp_path, **kw)
    assert calls == [1, 1]
    changed = EXAMPLES[:2] + [PairExample(2, "x" * 40, " a", " c", {})]  # the data changed
    tokenize_cached(changed, tok, cache_dir=tmp_path, **kw)
    assert calls == [1, 1, 1] and len(list(tmp_path.glob("*.json"))) == 4


def test_corrupt_cache_file_is_a_miss_and_is_rewritten(tmp_path):
    tok = tiny_tokenizer("char")
    first, _ = tokenize_cached(EXAMPLES[:1], tok, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_text(path.read_text()[:20])
    again, report = tokenize_cached(EXAMPLES[:1], tok, cache_dir=tmp_path)
    assert again == first and not report.from_cache
    assert tokenize_cached(EXAMPLES[:1], tok, cache_dir=tmp_path)[1].from_cache


def test_unpaired_from_pairs_and_prompts_round_trip(tmp_path):
    tok = tiny_tokenizer("bytelevel")
    unpaired, _ = load_rows([{"prompt": "Q:", "chosen": " yes", "rejected": " no", "w": 1}], kind="unpaired")
    first, _ = tokenize_cached(unpaired, tok, cache_dir=tmp_path)
    second, report = tokenize_cached(unpaired, tok, cache_dir=tmp_path)
    assert report.from_cache and second == first and [u.label for u in second] == [True, False]
    prompts = [PromptExample(4, "Tell me", {"k": 1})]
    first, report = tokenize_cached(prompts, tok, cache_dir=tmp_path, max_prompt_length=3)
    second, report2 = tokenize_cached(prompts, tok, cache_dir=tmp_path, max_prompt_length=3)
    assert (not report.from_cache, report2.from_cache, second) == (True, True, first)
    assert len(first[0].prompt_ids) == 3 and report2.prompt_truncated == 1 and second[0].extras == {"k": 1}
    with pytest.raises(ConfigError, match="has no setting"):
        tokenize_cached(prompts, tok, cache_dir=tmp_path, max_length=3)
    with pytest.raises(ConfigError, match="one type"):
        tokenize_cached(prompts + unpaired, tok, cache_dir=tmp_path)
    assert tokenize_cached([], tok, cache_dir=tmp_path)[0] == []
