"""`mlxspec` with a fault injected, for tests/test_distributed.py (not a test itself).

    python tests/dist_worker.py die|hang RANK BATCH -- mlxspec arguments...

The process of rank RANK exits (`die`, like a crash) or stops forever (`hang`, like a
Mac gone to sleep) when it reads global batch BATCH; the others run the real command.
"""

import os
import sys
import time

from mlx_specialize.data import tokens  # the installed package, as the test process's

fault, rank, at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
read_batch = tokens.PackedWindows.batch


def faulty_batch(self, i):
    if i == at and int(os.environ.get("MLX_RANK", "0")) == rank:
        if fault == "die":
            os._exit(9)
        time.sleep(3600)
    return read_batch(self, i)


tokens.PackedWindows.batch = faulty_batch
sys.argv = ["mlxspec", *sys.argv[sys.argv.index("--") + 1:]]

from mlxspec.main import main  # noqa: E402 (after the patch above)

main()
