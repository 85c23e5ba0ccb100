"""`metrics.jsonl`: one JSON row per logging window and per validation, appended by the main rank."""
import json
import os

from shards.files import atomic_write


class MetricsLog:
    """Append-only rows, `truncate_after` for a resume (rows past its checkpoint are redone)."""

    def __init__(self, path, enabled=True):
        self.path, self.enabled = path, enabled

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop rows later than `step` (written after the checkpoint a run resumes from); a fresh
        start truncates after 0."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        with open(self.path) as f:
            lines = [line for line in f if line.strip()]
        kept = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                pass  # a half-written last line
        atomic_write(self.path, lambda f: f.writelines(kept), mode="w")
