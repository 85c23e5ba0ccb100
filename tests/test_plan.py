"""preprocess/plan.py: `--part i/N` and the split of a shard into worker chunks."""
import pytest

from preprocess.plan import Part, ShardTask
from preprocess.source import Item


def test_part_parsing():
    assert Part.parse("1/3") == Part(1, 3) and str(Part(1, 3)) == "1/3"
    assert Part(1, 3).owns(4) and not Part(1, 3).owns(3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            Part.parse(bad)


def test_chunks_cover_a_shard_in_order_with_global_positions():
    items = [Item(f"train/n0/{i}.JPEG", 0) for i in range(10)]
    task = ShardTask("train", 3, 30, items)
    assert task.stem == "train-000003"
    chunks = task.chunks(4)
    assert len(chunks) == 3 and max(len(c) for c in chunks) - min(len(c) for c in chunks) <= 1
    assert [p for c in chunks for p, _ in c] == list(range(30, 40))
    assert [it for c in chunks for _, it in c] == items
    assert task.chunks(100) == [list(zip(range(30, 40), items))]
