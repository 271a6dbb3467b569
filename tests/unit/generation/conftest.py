"""The tiny model's generator as a fixture."""

from __future__ import annotations

import pytest

from app.generation.engine import TextGenerator
from tests.unit.generation.tiny import tiny_generator


@pytest.fixture
def generator() -> TextGenerator:
    return tiny_generator()
