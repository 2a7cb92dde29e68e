"""streaming: true (preflab.loops.streaming): the stream gives the ordinary run's weights when it reads the rows in
the ordinary run's order, is read lazily, resumes exactly, reports bad rows as the ordinary run does."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preflab.config import config_from_dict
from preflab.data.stream import ExampleStream, shuffled
from preflab.errors import ConfigError, DataError
from preflab.loops.batches import BatchPlan
from preflab.loops.offline import Trainer
from preflab.loops.sft import SFTTrainer
from preflab.loops.streaming import StreamPlan
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [json.loads(x) for x in (ROOT / "examples/data/loud_echo_pairs.jsonl").read_text().splitlines()]
SFT_ROWS = [json.loads(x) for x in (ROOT / "examples/data/loud_echo_sft.jsonl").read_text().splitlines()]
BAD = {"prompt": "echo: x\n", "chosen": "same", "rejected": "same"}  # identical responses: a bad row


def train(out, data, trainer=Trainer, rows=None, **overrides):
    torch.set_num_threads(1)
    params = dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(data), output_dir=str(out),
                  learning_rate=1e-3, per_device_train_batch_size=4, max_steps=4, logging_steps=1, max_length=64,
                  disable_tqdm=True, use_cpu=True, seed=3, on_bad_row="skip")
    params.update(overrides)
    run = trainer(config_from_dict(params), train_data=rows)
    return run.train(), load_file(str(Path(out) / "model.safetensors"))


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def ordinary_order(rows, n, per_device, seed):
    """The rows in the order the ordinary run reads them in its first epoch (BatchPlan's permutation)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(BatchPlan(n, per_device, 1, 1, seed).seed))
    return [rows[i] for i in perm.tolist()]


def test_stream_without_shuffle_equals_ordinary_run_on_rows_in_its_order(tmp_path):
    """Same rows, same order: the same weights after 4 steps, and the same bad-row counts (two identical pairs,
    skipped by both)."""
    good = PAIRS[:24]
    ordinary_data = write_jsonl(tmp_path / "all.jsonl", good[:5] + [BAD] + good[5:] + [BAD])
    summary, ordinary = train(tmp_path / "ordinary", ordinary_data)
    ordered = ordinary_order(good, 24, 4, 3)
    stream_data = write_jsonl(tmp_path / "ordered.jsonl", [BAD] + ordered[:3] + [BAD] + ordered[3:])
    stream_summary, streamed = train(tmp_path / "stream", stream_data, streaming=True)
    assert max_diff(ordinary, streamed) < 1e-6
    rows = stream_summary["data"]["train_rows"]
    assert rows["skipped"] == summary["data"]["train_rows"]["skipped"] == {"identical": 2}
    assert rows["total"] == 18 and rows["kept"] == 16  # 4 steps x 4 pairs read, plus the two bad rows among them
    assert stream_summary["data"]["streaming"]["passes_started"] == 1


def test_stream_from_a_datasets_iterable_equals_the_stream_from_the_file(tmp_path):
    """datasets.load_dataset(..., streaming=True) given from Python, and a hub-style name read with streaming
    (a local dataset directory), give the rows of the file."""
    import datasets

    from preflab.data.sources import _load_hub

    (tmp_path / "data").mkdir()
    path = write_jsonl(tmp_path / "data" / "train.jsonl", PAIRS[:16])
    iterable = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    assert isinstance(iterable, datasets.IterableDataset)
    _, from_file = train(tmp_path / "file", path, streaming=True, max_steps=3)
    _, from_iterable = train(tmp_path / "iter", "given-from-python", rows=iterable, streaming=True, max_steps=3)
    assert max_diff(from_file, from_iterable) == 0
    hub_style = _load_hub(str(tmp_path / "data"), "train", streaming=True)
    assert isinstance(hub_style, datasets.IterableDataset)
    assert [r["prompt"] for r in hub_style] == [r["prompt"] for r in PAIRS[:16]]


def test_the_stream_is_read_lazily_and_passes_repeat(tmp_path):
    """A source that fails once more than consumed + shuffle buffer rows are pulled; 2 steps of 4 pairs with a
    buffer of 5 read at most 13 rows. A 10-row source with 8 steps of 4 runs 4 passes (2 unused pairs per pass)."""
    pulled = []

    def rows():
        for i in range(10_000):
            if i >= 2 * 4 + 5:
                raise AssertionError(f"row {i} was read: the stream is not lazy")
            pulled.append(i)
            yield PAIRS[i % len(PAIRS)]

    train(tmp_path / "lazy", "python", rows=rows, streaming=True, max_steps=2,
          streaming_shuffle_buffer=5)
    assert len(pulled) <= 13
    summary, _ = train(tmp_path / "passes", "python", rows=lambda: iter(PAIRS[:10]), streaming=True, max_steps=8)
    assert summary["unused_rows_per_epoch"] == 3 * 2  # three passes ended, each leaving 10 - 2 * 4 pairs
    assert summary["data"]["streaming"]["passes_started"] == 4


def test_resume_mid_pass_with_shuffle_and_two_examples_per_row_equals_the_uninterrupted_run(tmp_path):
    """KTO reads each pairwise row as two examples; batches of 3 split rows, a shuffle buffer of 4 reorders them,
    10 rows (20 examples, one bad row) give 6 steps per pass. Resuming from step 5 (mid-row, pass 0) and from step 7
    (pass 1) ends with the weights and data counts of the uninterrupted 9 steps."""
    data = write_jsonl(tmp_path / "rows.jsonl", PAIRS[:6] + [BAD] + PAIRS[6:10])
    common = dict(streaming=True, streaming_shuffle_buffer=4, loss_type="kto", per_device_train_batch_size=3,
                  max_steps=9)
    full_summary, full = train(tmp_path / "full", data, save_steps=1, **common)
    for step in (5, 7):
        saved = json.loads((tmp_path / f"full/checkpoint-{step}/trainer_state.json").read_text())["data_position"]
        assert saved["step"] == step - 1 and saved["pass"] == (0 if step == 5 else 1)
        summary, resumed = train(tmp_path / f"resumed-{step}", data, resume_from_checkpoint=str(
            tmp_path / f"full/checkpoint-{step}"), **common)
        assert max_diff(full, resumed) == 0
        assert summary["data"]["train_rows"] == full_summary["data"]["train_rows"]
    assert full_summary["data"]["train_rows"]["skipped"] == {"identical": 1}
    assert saved["used_of_row"] in (1, 2)


def test_sft_stream_equals_ordinary_sft_run_on_rows_in_its_order(tmp_path):
    """... with the eval set (eval_dataset_name, read whole) giving the same eval metrics."""
    rows = SFT_ROWS[:20]
    evals = str(write_jsonl(tmp_path / "eval.jsonl", SFT_ROWS[20:28]))
    summary, ordinary = train(tmp_path / "ordinary", write_jsonl(tmp_path / "sft.jsonl", rows), SFTTrainer,
                              task="sft", eval_dataset_name=evals)
    ordered = write_jsonl(tmp_path / "ordered.jsonl", ordinary_order(rows, 20, 4, 3))
    stream_summary, streamed = train(tmp_path / "stream", ordered, SFTTrainer, task="sft", streaming=True,
                                     eval_dataset_name=evals)
    assert max_diff(ordinary, streamed) < 1e-6
    assert stream_summary["final_metrics"]["eval_loss"] == pytest.approx(summary["final_metrics"]["eval_loss"],
                                                                         abs=1e-6)
    assert stream_summary["data"]["eval_rows"]["total"] == 8


def test_a_bad_row_in_the_stream_is_the_ordinary_error_naming_file_row_and_field(tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", PAIRS[:6] + [{"prompt": "p", "chosen": "a"}] + PAIRS[6:20])
    with pytest.raises(DataError, match=r"bad\.jsonl row 6 \(line 7\), field 'rejected'.*on_bad_row: skip"):
        train(tmp_path / "out", data, streaming=True, on_bad_row="error")


def test_two_ranks_take_the_slices_of_one_rank_with_double_batch():
    """Micro-batch m of 1 process x 2b is micro-batch m of rank 0 then of rank 1 under 2 processes x b (the step
    normalises over all of them, so the gradients are equal)."""
    window = list(range(8))  # one global batch: 4 x 1 process x 2 accumulation = 2 x 2 processes x 2
    one = StreamPlan(4, 1, 2, 10).slices(window, 0)
    two = [StreamPlan(2, 2, 2, 10).slices(window, r) for r in (0, 1)]
    assert [two[0][m] + two[1][m] for m in range(2)] == one == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_shuffle_buffer_is_a_seeded_permutation_holding_at_most_its_size():
    import random

    held = []

    def source():
        for i in range(100):
            held.append(i)
            yield i

    out = []
    for x in shuffled(source(), 10, random.Random("3:0")):
        assert len(held) - len(out) <= 10 + 1  # the buffer and the row just read
        out.append(x)
    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert out == list(shuffled(range(100), 10, random.Random("3:0")))


def test_stream_state_restores_mid_row():
    class Pipe:
        def __init__(self):
            self.seen = []

        def __call__(self, raw):
            self.seen.append(raw)
            return [(raw, "a"), (raw, "b"), (raw, "c")]

        def reports(self):
            return {}

        def load_reports(self, saved):
            pass

    stream = ExampleStream(lambda: range(5), Pipe, shuffle_buffer=0)
    assert stream.next_batch(4) == [(0, "a"), (0, "b"), (0, "c"), (1, "a")]
    state = stream.state()
    rest = stream.next_batch(4)
    other = ExampleStream(lambda: range(5), Pipe)
    other.restore(state)
    assert other.next_batch(4) == rest == [(1, "b"), (1, "c"), (2, "a"), (2, "b")]
    # a position inside the pass's first row (rows_read 1): that row's remaining example comes first
    first = ExampleStream(lambda: range(5), Pipe, shuffle_buffer=0)
    assert first.next_batch(2) == [(0, "a"), (0, "b")]
    state = first.state()
    assert (state["rows_read"], state["used_of_row"]) == (1, 2)
    other = ExampleStream(lambda: range(5), Pipe, shuffle_buffer=0)
    other.restore(state)
    assert other.next_batch(4) == first.next_batch(4) == [(0, "c"), (1, "a"), (1, "b"), (1, "c")]


class OneExamplePerRow:
    """A stream pipeline whose one example of a row is the row itself."""

    def __call__(self, raw):
        return [raw]

    def reports(self):
        return {}

    def load_reports(self, saved):
        pass


def test_a_saved_position_past_the_sources_end_names_how_many_rows_it_has():
    """restore() re-reads the pass up to the saved row; a source now shorter than that is a DataError saying where it
    ends, whether it ends before the saved row or at it (the saved row itself missing). A position at row 0 reads
    nothing."""
    stream = ExampleStream(lambda: range(5), OneExamplePerRow, shuffle_buffer=0)
    stream.next_batch(2)
    state = stream.state()
    assert state["rows_read"] == 2
    for rows in (6, 9):
        other = ExampleStream(lambda: range(5), OneExamplePerRow, shuffle_buffer=0)
        with pytest.raises(DataError, match=rf"saved position is row {rows} of pass 0, but the source now ends after "
                                            r"5 rows"):
            other.restore({**state, "rows_read": rows, "used_of_row": 1})
    other = ExampleStream(lambda: range(5), OneExamplePerRow, shuffle_buffer=0)
    other.restore({**state, "rows_read": 0, "used_of_row": 0})
    assert other.next_batch(3) == [0, 1, 2]


def test_each_pass_of_a_shuffled_stream_has_its_own_seeded_order():
    """Pass p reads the rows through the buffer seeded "seed:p" (a new order each epoch, as the ordinary run's
    permutation per epoch); a planted bug that seeded every pass alike survived the one-pass tests."""
    import random

    stream = ExampleStream(lambda: range(12), OneExamplePerRow, seed=5, shuffle_buffer=4)
    first, second = stream.next_batch(12), stream.next_batch(12)
    assert first == list(shuffled(range(12), 4, random.Random("5:0")))
    assert second == list(shuffled(range(12), 4, random.Random("5:1")))
    assert sorted(second) == list(range(12)) and second != first and stream.pass_index == 1


@pytest.mark.parametrize("extra,message", [
    ({"max_steps": -1}, r"streaming: true needs max_steps.*set max_steps"),
    ({"eval_fraction": 0.1}, r"eval_fraction=0.1 cannot hold rows out of a stream.*eval_dataset_name"),
    ({"task": "reward"}, r"streaming: true applies to task: dpo \| sft, not task: reward"),
    ({"precompute_ref_log_probs": True}, r"precompute_ref_log_probs.*set precompute_ref_log_probs: false"),
    ({"streaming": False, "streaming_shuffle_buffer": 10}, r"streaming_shuffle_buffer applies with streaming: true"),
    ({"dataset_num_proc": 4}, r"dataset_num_proc=4 tokenizes data read whole.*remove dataset_num_proc"),
])
def test_streaming_options_streaming_cannot_honour_are_config_errors(extra, message):
    params = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "streaming": True,
              "max_steps": 10, **extra}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(params)


def test_trl_dataset_streaming_is_streaming():
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                            "dataset_streaming": True, "max_steps": 5})
    assert cfg.streaming is True


def test_a_json_array_is_read_element_by_element_when_streaming(tmp_path, monkeypatch):
    """Elements split across reads (a 64-byte read size), a BOM, an element that is not an object: the rows of
    json.load, in order; a broken tail is reached only after the rows before it (the whole-file reader refuses the
    file before its first row); a stream over the array trains as the stream over the same rows in JSON lines."""
    from preflab.data import sources
    from preflab.data.sources import RowReader

    monkeypatch.setattr(sources, "JSON_CHUNK", 64)
    rows = PAIRS[:12]
    path = tmp_path / "rows.json"
    path.write_bytes(b"\xef\xbb\xbf [\n" + ",\n ".join(json.dumps(r) for r in rows).encode() + b", 7 ]\n")
    read = list(RowReader(path, streaming=True))
    assert [r.data for r in read[:12]] == rows and read[12].problem.reason == "not_an_object"
    assert [r.data for r in RowReader(path)][:12] == rows  # the whole-file reader agrees
    broken = tmp_path / "broken.json"
    broken.write_text("[" + ", ".join(json.dumps(r) for r in rows) + ", {\"prompt\": ")
    it = iter(RowReader(broken, streaming=True))
    assert [next(it).data for _ in range(12)] == rows
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON after row 12"):
        next(it)
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        next(iter(RowReader(broken)))
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    _, from_array = train(tmp_path / "array", tmp_path / "pairs.json", streaming=True, max_steps=2)
    _, from_lines = train(tmp_path / "lines", write_jsonl(tmp_path / "pairs.jsonl", rows), streaming=True,
                          max_steps=2)
    assert max_diff(from_array, from_lines) == 0


def test_csv_parquet_and_save_to_disk_streams_train_as_the_jsonl_stream(tmp_path):
    import datasets

    rows = PAIRS[:12]
    table = datasets.Dataset.from_list(rows)
    table.to_csv(str(tmp_path / "rows.csv"), index=False)
    table.to_parquet(str(tmp_path / "rows.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    _, want = train(tmp_path / "jsonl", write_jsonl(tmp_path / "rows.jsonl", rows), streaming=True, max_steps=2)
    for source in ("rows.csv", "rows.parquet", "saved"):
        _, got = train(tmp_path / f"out-{source}", tmp_path / source, streaming=True, max_steps=2)
        assert max_diff(want, got) == 0, source


def test_examples_streaming_yaml_trains_offline_over_two_passes(tmp_path, capsys):
    from preflab.cli import main

    assert main(["train", str(ROOT / "examples/streaming.yaml"), f"output_dir={tmp_path}", "max_steps=33",
                 "save_steps=0", "logging_steps=33", f"dataset_name={ROOT / 'examples/data/loud_echo_pairs.jsonl'}",
                 "disable_tqdm=true"]) == 0
    data = json.loads((tmp_path / "summary.json").read_text())["data"]
    assert data["streaming"]["passes_started"] == 2 and data["train_rows"]["total"] == 256


def test_data_seed_alone_sets_the_streaming_shuffle(tmp_path):
    """data_seed (transformers' sampler seed) seeds the shuffle buffer's order; seed then changes only the rest."""
    def order(name, **seeds):
        params = dict(model_name_or_path="builtin:tiny-llama", dataset_name="python", output_dir=str(tmp_path / name),
                      per_device_train_batch_size=4, max_steps=3, max_length=64, disable_tqdm=True, use_cpu=True,
                      streaming=True, streaming_shuffle_buffer=6, **seeds)
        run = Trainer(config_from_dict(params), train_data=lambda: iter(PAIRS[:16]))
        seen, forward = [], run.forward
        run.forward = lambda mb: seen.append(list(mb.row_ids)) or forward(mb)
        run.train()
        return seen

    first = order("a", seed=3, data_seed=9)
    assert order("b", seed=4, data_seed=9) == first
    assert order("c", seed=3) != first


def test_stream_counts_say_the_first_pass_and_every_row_read():
    """The data report of a stream covers its first pass; a run past it gave no rows per pass and no total of rows
    read: state() and the report now hold rows_per_pass (once the first pass ended, kept across a resume) and
    rows_read_total over every pass."""
    from preflab.loops.streaming import stream_report

    class Pipe:
        def __call__(self, raw):
            return [raw]

        def reports(self):
            from preflab.data.report import DataReport, TokenizeReport
            return {"rows": DataReport(), "tokenize": TokenizeReport()}

        def load_reports(self, saved):
            pass

    stream = ExampleStream(lambda: range(5), Pipe)
    stream.next_batch(2)
    assert (stream.rows_per_pass, stream.rows_read_total()) == (None, 2)
    info = stream_report(stream)["streaming"]  # under way: the counts are of the rows read so far
    assert (info["passes_started"], info["first_pass_complete"], info["rows_read_in_pass"]) == (1, False, 2)
    for _ in range(3):  # [0, 1] [2, 3] (4 unused) [0, 1] [2, 3]
        stream.next_batch(2)
    info = stream_report(stream)["streaming"]
    assert (info["first_pass_complete"], info["rows_per_pass"], info["rows_read_total"]) == (True, 5, 9)
    state = stream.state()
    other = ExampleStream(lambda: range(5), Pipe)
    other.restore(state)
    assert (other.rows_per_pass, other.rows_read_total()) == (5, 9)
    assert other.next_batch(2) == stream.next_batch(2) == [0, 1]
    assert other.rows_read_total() == stream.rows_read_total() == 12


def _note_lines(out: str) -> list[str]:
    return sorted(line for line in out.splitlines() if line.startswith("preflab: note: data:"))


def test_stream_counts_repeated_rows_and_eval_prompts_as_the_ordinary_run(tmp_path, capsys):
    """20 rows, 4 of them repeats, and an eval set of 4 pairs whose first 2 prompts are train prompts: the streaming
    run (over its first pass) gives the ordinary run's overlap report and prints its notes word for word (it printed
    none and counted no repeats)."""
    good = PAIRS[:16]
    data = write_jsonl(tmp_path / "rows.jsonl", good[:12] + good[:4] + good[12:])
    evals = write_jsonl(tmp_path / "eval.jsonl", good[:2] + PAIRS[40:42])
    common = dict(eval_dataset_name=str(evals), eval_steps=100, max_steps=6)
    capsys.readouterr()
    ordinary, _ = train(tmp_path / "ordinary", data, **common)
    ordinary_notes = _note_lines(capsys.readouterr().out)
    streamed, _ = train(tmp_path / "stream", data, streaming=True, **common)
    out = capsys.readouterr().out
    assert ordinary["data"]["overlap"] == {"duplicate_train_examples": 4, "eval_prompts_in_train": 2}
    assert streamed["data"]["overlap"] == ordinary["data"]["overlap"]
    assert streamed["data"]["streaming"]["first_pass_complete"]
    assert len(ordinary_notes) == 2 and _note_lines(out) == ordinary_notes
    assert ("preflab: data: streaming, counts of one pass (first pass, whole source; later passes read the same rows "
            "and are not counted again): ") in out
    part, _ = train(tmp_path / "part", data, streaming=True, max_steps=2)  # rows 1-8: no repeat read yet
    out = capsys.readouterr().out
    assert "counts of one pass (the first 8 rows read; the first pass did not end): " in out
    assert part["data"]["overlap"]["duplicate_train_examples"] == 0 and _note_lines(out) == []


def test_stream_resumed_in_its_first_pass_still_counts_repeats_of_rows_before_the_position(tmp_path):
    """Rows 9-12 repeat rows 1-4; a resume after step 2 (row 8 of pass 0) skips rows 1-8 unparsed, yet counts
    the 4 repeats as the uninterrupted run does (the skipped rows' digests are noted again, not counted)."""
    good = PAIRS[:12]
    data = write_jsonl(tmp_path / "rows.jsonl", good[:8] + good[:4] + good[8:])
    common = dict(streaming=True, max_steps=5)
    full, _ = train(tmp_path / "full", data, save_steps=1, **common)
    resumed, _ = train(tmp_path / "resumed", data, resume_from_checkpoint=str(tmp_path / "full/checkpoint-2"),
                       **common)
    assert full["data"]["overlap"]["duplicate_train_examples"] == 4
    assert resumed["data"]["overlap"] == full["data"]["overlap"]
    assert resumed["data"]["train_rows"] == full["data"]["train_rows"]


def test_stream_overlap_state_round_trips_and_stops_holding_digests_after_the_first_pass():
    """StreamOverlap's counts equal overlap_report's on the same examples; load(to_dict()) keeps them; after the
    first pass it holds no digests and counts nothing more."""
    from preflab.data.overlap import StreamOverlap, overlap_report, prompt_digests
    from preflab.data.rows import load_rows

    rows, _ = load_rows(PAIRS[:6] + PAIRS[:3], kind="pairwise")
    evals, _ = load_rows(PAIRS[4:5] + PAIRS[50:52], kind="pairwise")
    counter = StreamOverlap(eval_prompts=prompt_digests(evals))
    counter.see(rows)
    assert counter.report() == overlap_report(rows, evals) == {"duplicate_train_examples": 3,
                                                                "eval_prompts_in_train": 1}
    again = StreamOverlap(eval_prompts=counter.eval_prompts)
    again.load(counter.to_dict())
    again.see(rows[:6], count=False)  # a resume re-notes the rows before its position
    again.see(rows[:1])
    assert again.report()["duplicate_train_examples"] == 4
    again.end_first_pass()
    again.see(rows)
    assert again.report() == {"duplicate_train_examples": 4, "eval_prompts_in_train": 1}
    assert again._contents is None and again._prompts == set()


def test_a_stream_tokenizes_with_every_setting_of_the_ordinary_run(tmp_path, monkeypatch):
    """The stream's examples are the ordinary run's tokenized items, max_completion_length's cut included (a
    planted bug that dropped it from the stream's settings survived: no streaming test set it), counted alike."""
    from types import SimpleNamespace

    from preflab.data.rows import load_rows
    from preflab.loops.prepare import _tokenize
    from preflab.loops.streaming import open_stream
    from preflab.models.load import load_tokenizer

    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:8])
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(data),
                                output_dir=str(tmp_path / "out"), streaming=True, max_steps=2, use_cpu=True,
                                max_length=64, max_completion_length=3, on_bad_row="skip"))
    tok = load_tokenizer(cfg.model_name_or_path)
    stream, _ = open_stream(cfg, tok, SimpleNamespace(name="pairs"))
    rows, report = load_rows(str(data), kind="pairwise")
    ordinary, ordinary_report = _tokenize("pairs", rows, tok, cfg, report.source)
    streamed = stream.next_batch(len(ordinary))
    assert len(ordinary) >= 4 and streamed == ordinary
    assert {len(p.chosen_ids) for p in streamed} == {3}  # every "KIT CAT HAT" + eos is longer than 3 tokens
    tokenize_report = stream.pipeline.reports()["tokenize"]
    assert tokenize_report.skipped == ordinary_report.skipped  # rows whose cut responses are equal
    assert tokenize_report.response_truncated == ordinary_report.response_truncated == len(ordinary)
