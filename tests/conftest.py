import os, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("TEST_THREADS", "2")))   # the mutation check runs 2 x 1


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a learning test that trains for several seconds")


from hypothesis import settings  # noqa: E402

# The same examples on every run: a failure here is a failure everywhere, not a flake.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.load_profile("deterministic")


def write_idx(path, array):
    """Write a uint8 array as a gzip IDX file (MNIST's format; the inverse of common.read_idx)."""
    import gzip, struct
    import numpy as np
    array = np.asarray(array, np.uint8)
    header = struct.pack(">II", 2049 if array.ndim == 1 else 2051, len(array))
    header += b"".join(struct.pack(">I", d) for d in array.shape[1:])
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())
