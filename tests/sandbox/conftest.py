from __future__ import annotations

from pathlib import Path

import pytest

from churn.sandbox.world import World, generate_world, write_world


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Path]:
    world = generate_world(60, seed=11)
    folder = tmp_path_factory.mktemp("world")
    write_world(world, folder, seed=11)
    return world, folder
