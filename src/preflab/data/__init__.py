"""The data path: rows -> validated examples (`rows`) -> token ids (`tokenize`) -> batches (`layout`)."""
from preflab.data.cache import tokenize_cached
from preflab.data.examples import PairExample, PromptExample, UnpairedExample
from preflab.data.report import DataReport, TokenizeReport
from preflab.data.rows import load_rows
from preflab.data.tokenize import (TokenizedPair, TokenizedPrompt, TokenizedUnpaired, tokenize_pairs,
                                   tokenize_prompts, tokenize_unpaired)

__all__ = ["load_rows", "tokenize_pairs", "tokenize_unpaired", "tokenize_prompts", "tokenize_cached",
           "PairExample", "UnpairedExample", "PromptExample", "TokenizedPair", "TokenizedUnpaired",
           "TokenizedPrompt", "DataReport", "TokenizeReport"]
