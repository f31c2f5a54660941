"""Shared pytest set-up.

Hypothesis runs derandomized by default so that CI on a clean clone sees the same cases on
every run (a failure found there is reproducible, and a pass is not luck). To hunt for new
failures, run with ``HYPOTHESIS_PROFILE=explore`` (random cases, more of them).
"""
import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=500, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The recipe sets torch's thread count (num_threads): every test gets it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
