"""preprocess/outdir.py: what OUT keeps between runs (settings, per-shard records) and its lock
(the lock between two processes: tests/cli/test_preprocess_cli.py)."""
import json
import re

import numpy as np
import pytest

from preprocess import outdir
from preprocess.outdir import OutError, ShardRecord, load_record, locked, prepare, save_record
from shards import StatSums, UserError
from shards.writer import ShardWriter


def test_the_lock_refuses_a_second_holder(tmp_path):
    out = tmp_path / "o"
    with locked(str(out)):
        with pytest.raises(OutError, match="another alexnet preprocess") as e:
            with locked(str(out)):
                pass
        assert isinstance(e.value, UserError) and e.value.exit_code == 2
    assert not (out / ".lock").exists()


def test_prepare_records_the_settings_and_refuses_others(tmp_path):
    out = str(tmp_path / "o")
    params = {"size": 256, "quality": 90, "seed": 0, "files": {"train": {"count": 3, "sha256": "ab"}}}
    assert prepare(out, params, ["n1", "n2"]) == (None, params)
    with open(tmp_path / "o" / ".parts" / "params.json") as f:
        text = f.read()
    assert json.loads(text) == {"params": params, "classes": ["n1", "n2"]} and not text.endswith("\n")
    assert prepare(out, dict(params), ["n1", "n2"]) == (None, params)  # the same job again
    with pytest.raises(OutError, match=r"other settings \(seed 0 vs 1\)"):
        prepare(out, dict(params, seed=1), ["n1", "n2"])
    with pytest.raises(OutError, match="training classes differ"):
        prepare(out, params, ["n1"])
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(OutError, match="not empty"):
        prepare(str(tmp_path / "foreign"), params, ["n1"])


def test_a_record_round_trips_and_is_dropped_when_its_tar_changed(tmp_path):
    out = str(tmp_path)
    (tmp_path / ".parts").mkdir()
    with ShardWriter(out, "train-000000") as w:
        w.write("train_00000000", b"\xff\xd8jpeg", 1, {})
    sums = StatSums(size=4)
    sums.add(np.full((4, 4, 3), 7, np.uint8))
    errors = [{"split": "train", "position": 1, "path": "x", "reason": "truncated"}]
    save_record(out, ShardRecord("train-000000", 2, w.info, (tmp_path / "train-000000.tar").stat().st_size, errors,
                                 sums))
    rec = load_record(out, "train-000000")
    assert (rec.stem, rec.files, rec.shard, rec.errors) == ("train-000000", 2, w.info, errors)
    assert np.array_equal(rec.sums.pixel_sum, sums.pixel_sum) and rec.sums.images == 1
    assert load_record(out, "train-000000", with_sums=False).sums is None
    assert outdir.sha256_matches(str(tmp_path / "train-000000.tar"), w.info.sha256)
    with open(tmp_path / "train-000000.tar", "ab") as f:
        f.write(b"more")
    assert load_record(out, "train-000000") is None  # another size: the shard is written again
    assert load_record(out, "train-000001") is None


@pytest.mark.parametrize("text, says", [
    ("{not json", "not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)"),
    ("[]", "not a record of preprocess settings"),
    ('{"params": {}, "classes": "n1"}', "classes: expected a list of wnids"),
    ('{"params": {"files": {"train": {"count": "3", "sha256": "ab"}}}, "classes": []}', "params.files: expected"),
])
def test_a_damaged_settings_record_is_one_line_and_kept(tmp_path, text, says):
    out = tmp_path / "o"
    (out / ".parts").mkdir(parents=True)
    (out / ".parts" / "params.json").write_text(text)
    with pytest.raises(OutError, match=re.escape(says)) as e:
        prepare(str(out), {"size": 256, "files": {}}, ["n1"])
    assert str(out / ".parts" / "params.json") in str(e.value) and "choose another OUT" in str(e.value)
    assert (out / ".parts" / "params.json").read_text() == text


def test_a_setting_left_out_is_its_default():
    assert outdir.differences({"seed": 0}, {"seed": 0, "strict": False}) == []
    assert outdir.differences({"seed": 0}, {"seed": 0, "strict": True}) == ["strict False vs True"]
    files = {"train": {"count": 36, "sha256": "a"}}
    assert outdir.differences({"seed": 0, "files": files}, {"seed": 1, "files": dict(files, train={"count": 36,
                                                                                                   "sha256": "b"})}) \
        == ["seed 0 vs 1"]  # the file order follows the seed: only the seed is named
