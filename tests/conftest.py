"""Session-wide test settings.

No test may reach a model hub (none is reachable here, and a robot has none), and ROS
traffic stays on this machine in a domain of its own so that parallel runs do not hear
each other.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads; on a loaded 2-core machine (CI, or a
    training job beside the tests) two threads made each forward pass far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
