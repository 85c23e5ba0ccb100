"""shards/manifest.py: load, validate and save, byte for byte."""
import json

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
