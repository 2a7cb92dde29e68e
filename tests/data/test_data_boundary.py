"""The prompt/response token boundary (RELIABILITY.md B1-B3): a BPE merge across the boundary, word-start
marker tokenizers, and a property test over many strings and three tokenizer types."""
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from preflab.data.boundary import decode, encode, split_exact
from preflab.data.examples import PairExample
from preflab.data.tokenize import tokenize_pairs
from preflab.errors import DataError
from preflab.models.tiny import tiny_tokenizer

TOKS = {kind: tiny_tokenizer(kind) for kind in ("bytelevel", "char", "whitespace")}


def test_bpe_merge_across_the_boundary_stays_exact():
    tok = TOKS["bytelevel"]
    prompt, response = "the cat sat on ", "the mat"
    prompt_ids, joint = encode(tok, prompt), encode(tok, prompt + response)
    # the fixture really merges across the boundary: " " + "the" became one token " the"
    assert joint[:len(prompt_ids)] != prompt_ids
    naive_response = joint[len(prompt_ids):]  # what a length-based cut of the joint ids gives
    assert decode(tok, naive_response) != response
    (pair,), report = tokenize_pairs([PairExample(0, prompt, response, " a dog", {})], tok)
    assert decode(tok, pair.prompt_ids) == "<s>" + prompt  # the prompt's own ids, as at inference
    assert pair.prompt_ids[1:] == prompt_ids
    assert decode(tok, pair.chosen_ids) == response + "</s>"
    assert decode(tok, pair.prompt_ids + pair.chosen_ids) == "<s>" + prompt + response + "</s>"
    assert report.boundary_merged == 1 and report.boundary_shifted == 0


def test_word_start_marker_tokenizer_does_not_invent_a_space():
    tok = tiny_tokenizer("whitespace")  # SentencePiece-like: "there" alone encodes as "▁there"
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    prompt, response = "hi ", "there"
    assert decode(tok, encode(tok, prompt) + encode(tok, response)) == "hi  there"  # the naive split
    split = split_exact(tok, prompt, [response])
    assert split.how == "merged" and decode(tok, split.prompt_ids + split.response_ids[0]) == "hi there"


def test_prepend_always_falls_back_to_the_common_prefix_cut_and_counts_it():
    tok = TOKS["whitespace"]  # prepend_scheme="always": no way to continue "hi " with "there" exactly
    (pair,), report = tokenize_pairs([PairExample(0, "hi ", "there", "you", {})], tok)
    assert decode(tok, pair.prompt_ids + pair.chosen_ids) == decode(tok, [1] + encode(tok, "hi there") + [2])
    assert report.boundary_shifted == 1 and "shifted 1" in report.summary()
    with pytest.raises(DataError, match="row 0, field 'chosen': the tokenizer merges the end of the prompt"):
        tokenize_pairs([PairExample(0, "th", "e", "c", {})], tok)  # "▁the": no shared token at all


ASCII = string.ascii_letters + string.digits + string.punctuation.replace("<", "") + " \n"
WORDS = string.ascii_letters + string.digits + string.punctuation.replace("<", "") + " "  # whitespace: no "\n"


def texts(alphabet):
    return st.text(alphabet, min_size=1, max_size=25).filter(lambda s: s.strip())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.one_of(texts(ASCII), st.text(min_size=1, max_size=20).filter(lambda s: s.strip() and "<" not in s)),
       chosen=texts(ASCII), rejected=texts(ASCII))
def test_property_bytelevel_split_is_exact(prompt, chosen, rejected):
    assume(chosen != "~" + rejected)
    tok = TOKS["bytelevel"]
    pairs, report = tokenize_pairs([PairExample(0, prompt, chosen, "~" + rejected, {})], tok, max_length=None)
    (pair,) = pairs
    assert decode(tok, pair.prompt_ids) == "<s>" + prompt
    assert decode(tok, pair.chosen_ids) == chosen + "</s>"
    assert decode(tok, pair.rejected_ids) == "~" + rejected + "</s>"
    assert decode(tok, pair.prompt_ids + pair.chosen_ids) == "<s>" + prompt + chosen + "</s>"
    assert pair.prompt_ids[1:] == encode(tok, prompt) and report.boundary_shifted == 0


@settings(max_examples=60, deadline=None)
@given(prompt=texts(ASCII), chosen=texts(ASCII))
def test_property_char_split_is_exact(prompt, chosen):
    tok = TOKS["char"]
    (pair,), _ = tokenize_pairs([PairExample(0, prompt, chosen, chosen + "~", {})], tok, max_length=None)
    assert decode(tok, pair.prompt_ids) == "<s>" + prompt and decode(tok, pair.chosen_ids) == chosen + "</s>"
    assert len(pair.prompt_ids) == len(prompt) + 1 and len(pair.chosen_ids) == len(chosen) + 1


@settings(max_examples=60, deadline=None)
@given(prompt=texts(WORDS), chosen=texts(WORDS))
def test_property_whitespace_concatenation_is_exact_or_row_is_reported(prompt, chosen):
    tok = TOKS["whitespace"]
    pairs, report = tokenize_pairs([PairExample(0, prompt, chosen, chosen + "~", {})], tok,
                                   max_length=None, on_bad_row="skip")
    if not pairs:  # no token boundary exists; the row is skipped and counted, never mis-split
        assert report.skipped == {"boundary_unrepresentable": 1}
        return
    (pair,) = pairs
    whole = decode(tok, [tok.bos_token_id] + encode(tok, prompt + chosen) + [tok.eos_token_id])
    assert decode(tok, pair.prompt_ids + pair.chosen_ids) == whole  # same text as tokenizing the whole
    assert pair.chosen_ids[-1] == tok.eos_token_id and pair.chosen_ids.count(tok.eos_token_id) == 1
    if report.boundary_shifted == 0:  # the prompt keeps its own ids; the response region is the response
        assert pair.prompt_ids[1:] == encode(tok, prompt)
        assert decode(tok, pair.prompt_ids + pair.chosen_ids).startswith(decode(tok, pair.prompt_ids))


def test_joint_only_keeps_the_joint_ids_where_a_merge_crosses_the_boundary():
    """joint_only (reward models: TRL's tokenizer(prompt + response)) never tokenizes the response apart: where " the"
    merges across the boundary the split falls back to the common-prefix cut, so prompt ids + response ids are the
    joint tokenization of each text; a response that did split exactly gets the prompt's cut tail in front."""
    tok = TOKS["bytelevel"]
    prompt, merged, plain = "the cat sat on ", "the mat", " a dog"
    assert split_exact(tok, prompt, [merged]).how == "merged"  # without joint_only: the response apart
    split = split_exact(tok, prompt, [merged, plain], joint_only=True)
    assert split.how == "shifted" and split.prompt_ids == encode(tok, prompt)[:-1]  # the trailing " " moves over
    assert [split.prompt_ids + ids for ids in split.response_ids] == [encode(tok, prompt + merged),
                                                                      encode(tok, prompt + plain)]


def test_the_shifted_cut_is_the_prefix_every_response_shares_up_to_its_first_difference():
    """The common-prefix cut is the longest *prefix* shared with every response: " teec" + "tch" tokenizes as
    ▁t e ect c h (2 tokens shared, not 3 counting the "c" that matches again after the merge), " teec" + "e" as
    ▁t e e ce (3 shared), so the prompt keeps ▁t e, the fewest; every response is exact as a concatenation
    (prompt ids + response ids = the joint tokenization), the prompt's cut tail in front of "h", which had split
    exactly."""
    tok = TOKS["whitespace"]
    prompt, responses = " teec", ["tch", "e", "h"]
    assert [tok.convert_ids_to_tokens(encode(tok, prompt + r)) for r in responses] == [
        ["▁t", "e", "ect", "c", "h"], ["▁t", "e", "e", "ce"], ["▁t", "e", "e", "c", "h"]]
    split = split_exact(tok, prompt, responses)
    assert split.how == "shifted" and split.prompt_ids == encode(tok, prompt)[:2]
    assert [split.prompt_ids + ids for ids in split.response_ids] == [encode(tok, prompt + r) for r in responses]
