"""MAPL's vocabulary (preflab.data.mapl.Vocabulary): the words violated include_word instructions draw from are the
base responses' words of three letters or more, lower-cased (as satisfied ones take from y), and its end phrases the
last one and two tokens of each response."""
import random

from preflab.data.mapl import Vocabulary, check, generate


def test_vocabulary_keeps_words_of_three_letters_or_more_and_both_end_phrase_lengths():
    vocab = Vocabulary.of(["I am a Cat, it is OK", "Go to the barn."])
    assert vocab.words == ("barn", "cat", "the")
    assert vocab.phrases == ("OK", "barn.", "is OK", "the barn.")


def test_a_violated_include_word_names_a_vocabulary_word_y_lacks():
    vocab = Vocabulary.of(["I am a Cat, it is OK", "Go to the barn."])
    y = "the cat sat"
    made = {generate("include_word", y, False, random.Random(seed), vocab).arg for seed in range(10)}
    assert made == {"barn"} and not check(generate("include_word", y, False, random.Random(0), vocab), y)
