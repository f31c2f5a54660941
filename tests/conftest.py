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

# One intra-op thread for the tests' own torch work (FXPRUNE_TEST_THREADS to change it). The
# tests run batch-1 models at 64 px, where a second thread gains little, and on a 2-core CI
# host with any other load torch's two-thread barriers spin: six torchvision models of the
# zoo sweep took 41 s with two threads beside one other process and 13 s with one, and the
# whole suite's time went from 19 to 50 minutes between two CI runs of the same code.
# The README's command runs two pytest-xdist workers (-n 2): one thread each fills the 2 cores.
torch.set_num_threads(int(os.environ.get("FXPRUNE_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The recipe sets torch's thread count (num_threads): every test gets it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
