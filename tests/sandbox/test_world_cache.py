"""The demo's world cache is keyed by the generator's own source, not only its version."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from churn.sandbox import demo, world


def test_the_cache_key_changes_with_the_generator_source(tmp_path: Path) -> None:
    day = datetime(2026, 12, 1, tzinfo=UTC)
    folder = demo.world_folder(tmp_path, 50, 7, day)
    digest = hashlib.sha256(Path(world.__file__).read_bytes()).hexdigest()[:10]
    assert digest in folder.name
    assert folder.name == f"world-v{world.GENERATOR_VERSION}-{digest}-50-s7-20261201"
