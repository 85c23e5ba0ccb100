"""Turning an ImageNet folder into shards: decoding, resizing, statistics."""
