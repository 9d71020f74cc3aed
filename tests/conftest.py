import os, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

torch.set_num_threads(2)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a learning test that trains for several seconds")


from hypothesis import settings  # noqa: E402

# The same examples on every run: a failure here is a failure everywhere, not a flake.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.load_profile("deterministic")
