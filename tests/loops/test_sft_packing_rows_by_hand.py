"""packing_strategy wrapped / bfd_split (preflab.loops.sft_packing) on hand-made tokenized rows (mutation-mx round):
which row each chunk is attributed to, and each fragment's tokens and loss, written out."""
from preflab.loops.sft_packing import split_fragments, wrap_chunks
from preflab.loops.sft_rows import TokenizedSFT


def _row(row_id, start, n):
    """A text-like row of n tokens start, start+1, ..., every token labelled (token 0 too)."""
    ids = list(range(start, start + n))
    return TokenizedSFT(row_id, ids[:1], ids[1:], first_is_label=True)


def test_each_wrapped_chunk_belongs_to_the_row_of_its_first_token():
    """Rows 10 (5 tokens), 11 (3), 12 (6) concatenated: 14 tokens cut every 4 -> chunks starting at tokens 0, 4, 8,
    12, i.e. in rows 10, 10, 11 -> 12 (token 8 is row 12's first), 12; every chunk's tokens after its first carry loss."""
    items = [_row(10, 100, 5), _row(11, 200, 3), _row(12, 300, 6)]
    chunks, left_out = wrap_chunks(items, 4)
    assert left_out == 0
    assert [c.row_id for c in chunks] == [10, 10, 12, 12]
    assert [c.prompt_ids + c.completion_ids for c in chunks] == [
        [100, 101, 102, 103], [104, 200, 201, 202], [300, 301, 302, 303], [304, 305]]
    assert all(len(c.prompt_ids) == 1 and c.loss_mask is None for c in chunks)
    # groups of one row: each row is cut alone (row 10's last chunk [104] has nothing to predict: left out)
    per_row, left_out = wrap_chunks(items, 4, group=1)
    assert [c.row_id for c in per_row] == [10, 11, 12, 12] and left_out == 1


def test_bfd_split_cuts_each_row_alone_at_max_length():
    fragments, left_out = split_fragments([_row(7, 0, 9), _row(8, 50, 2)], 4)
    assert [(f.row_id, f.prompt_ids + f.completion_ids) for f in fragments] == [
        (7, [0, 1, 2, 3]), (7, [4, 5, 6, 7]), (8, [50, 51])]
    assert left_out == 1                              # row 7's last fragment [8]: one token, nothing predicted
