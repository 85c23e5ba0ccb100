"""shards/manifest.py: load, validate and save, byte for byte."""
import json
import re

import pytest

from samplekit import shards_dir  # noqa: F401 (a fixture)


def test_manifest_round_trip_and_validation(shards_dir, tmp_path):
    from shards.manifest import Manifest, ManifestError

    m = Manifest.load(shards_dir)
    m.save(tmp_path)
    assert Manifest.load(tmp_path) == m
    assert (tmp_path / "manifest.json").read_bytes() == (shards_dir / "manifest.json").read_bytes()
    raw = json.load(open(shards_dir / "manifest.json"))
    raw["splits"]["train"]["samples"] += 1
    json.dump(raw, open(tmp_path / "manifest.json", "w"))
    with pytest.raises(ManifestError, match="samples"):
        Manifest.load(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no manifest"):
        Manifest.load(tmp_path / "empty")


def _edited(shards_dir, tmp_path, edit):
    raw = json.load(open(shards_dir / "manifest.json"))
    raw = edit(raw) or raw  # an edit returns a new value, or None when it changed `raw` in place
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    return tmp_path


@pytest.mark.parametrize("edit, says", [
    (lambda m: [m], "top level: expected an object, found a list"),
    (lambda m: m.update(image_size="256"), "image_size: expected an integer, found a string"),
    (lambda m: m["classes"][1].update(index=True), "classes[1].index: expected an integer, found true/false"),
    (lambda m: m["splits"]["val"]["shards"][0].pop("sha256") and None, "splits.val.shards[0]: missing field 'sha256'"),
    (lambda m: m["stats"].update(eigvec=[[1, 0, 0], [0, 1, 0]]), "stats.eigvec: expected 3 values, found 2"),
    (lambda m: m["stats"]["sums"].update(sum=[1.5, 2, 3]), "stats.sums.sum[0]: expected an integer, found a number"),
    (lambda m: m.update(errors=-1), "errors: -1 is negative"),
    (lambda m: m.update(extra=1), "top level: unknown field 'extra'"),
    (lambda m: m["splits"]["train"]["shards"][0].update(tar="../elsewhere.tar"), "plain names in the directory"),
])
def test_fields_of_the_wrong_type_are_a_damaged_manifest(shards_dir, tmp_path, edit, says):
    from shards.manifest import DamagedManifest, Manifest, ManifestError

    with pytest.raises(DamagedManifest, match=re.escape(says)) as e:
        Manifest.load(_edited(shards_dir, tmp_path, edit))
    assert isinstance(e.value, ManifestError) and e.value.exit_code == 1
    assert str(tmp_path / "manifest.json") in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("edit, says", [
    (lambda s: s.update(mean=[float("nan"), 0.5, 0.5]), "not a finite number"),
    (lambda s: s.update(mean=[0.5, 1.5, 0.5]), "stats.mean [0.5, 1.5, 0.5] is outside [0,1]"),
    (lambda s: s.update(std=[0.2, 0.0, 0.2]), "stats.std [0.2, 0.0, 0.2]: each must be in (0, 1]"),
    (lambda s: s.update(eigval=[0.05, 0.01, -0.002]), "must be >= 0 and descending"),
    (lambda s: s.update(eigval=[0.01, 0.05, 0.002]), "must be >= 0 and descending"),
    (lambda s: s.update(eigvec=[[1, 0, 0], [0, 1, 0], [0, 1, 0]]), "its columns are not orthonormal"),
    (lambda s: s.update(images=s["images"] + 1), "stats.pixels"),
])
def test_statistics_a_trainer_cannot_use_are_a_damaged_manifest(shards_dir, tmp_path, edit, says):
    from shards.manifest import DamagedManifest, Manifest

    with pytest.raises(DamagedManifest, match=re.escape(says)):
        Manifest.load(_edited(shards_dir, tmp_path, lambda m: edit(m["stats"])))


def test_a_manifest_that_cannot_be_read(shards_dir, tmp_path):
    from shards.manifest import DamagedManifest, Manifest, ManifestError

    with pytest.raises(ManifestError, match="no such shard directory") as e:
        Manifest.load(tmp_path / "missing")
    assert e.value.exit_code == 2 and not isinstance(e.value, DamagedManifest)
    (tmp_path / "manifest.json").write_bytes((shards_dir / "manifest.json").read_bytes()[:100])
    with pytest.raises(DamagedManifest, match="not valid JSON .* at line") as e:
        Manifest.load(tmp_path)
    assert e.value.exit_code == 1
    (tmp_path / "manifest.json").write_bytes(b'{"version": 1, "name": "caf\xe9"}')
    with pytest.raises(DamagedManifest, match="not UTF-8 text"):
        Manifest.load(tmp_path)
