"""Training on several processes or Macs with MLX's own distributed layer.

Everything here sits on `mx.distributed` (ring over TCP / Thunderbolt, MPI, NCCL on
CUDA) and its launcher `mlx.launch`; there is no communication code of our own:

    mlx.launch -n 2 --backend ring -- mlxspec pretrain runs/generic ...      # one machine
    mlx.launch --hostfile hosts.json -- mlxspec pretrain runs/generic ...    # two Macs

A process that was not launched that way sees a group of size 1, and every helper below
is then a no-op: single-process and distributed training are one code path.

Data parallelism (see `Trainer`): global batch i is fixed by the run's seed, whatever the
number of processes; rank r trains on rows `rows(B)` of it, a contiguous slice, and the
loss is the masked mean over the *global* batch (each rank divides its summed NLL by the
global count of target tokens, computed from the batch itself, and the gradients are
summed with `nn.average_gradients`). So 2 processes x B/2 rows step exactly like 1 x B, up
to the order of float sums, and a checkpoint does not depend on the world size.

Failure: a peer that dies closes its sockets, and the ring raises on every survivor
(`PeerLost`); a peer that hangs (a Mac asleep, a cable pulled) is caught by a
`Watchdog`, which ends the process after `MLXSPEC_DIST_TIMEOUT` seconds (default 300)
without progress. Either way each survivor prints its rank and step, and `--resume`
restarts from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import SpecializeError

DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class World:
    """The processes of this job: `group` (an `mx.distributed.Group`, or None alone),
    this process' `rank`, the `size` of the job and `local` processes on this host."""

    group: object
    rank: int
    size: int
    local: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_rows: int) -> slice:
        """This rank's contiguous slice of a global batch of `batch_rows` rows."""
        if batch_rows < self.size:
            raise SpecializeError(
                f"a batch of {batch_rows} rows cannot be split over {self.size} processes; raise --batch-size"
            )
        return slice(batch_rows * self.rank // self.size, batch_rows * (self.rank + 1) // self.size)

    def shard(self, n: int) -> range:
        """Items 0..n-1 this rank handles (round-robin: rank, rank + size, ...)."""
        return range(self.rank, n, self.size)


SOLO = World(None, 0, 1, 1)
_world: World | None = None
_solo_depth = 0


def _local_size(rank: int, size: int) -> int:
    """Processes of this job on this host: same address in the ring hostfile, or MPI's
    local size; 1 when unknown."""
    if os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "").isdigit():
        return int(os.environ["OMPI_COMM_WORLD_LOCAL_SIZE"])
    try:
        with open(os.environ["MLX_HOSTFILE"]) as f:
            hosts = json.load(f)
        ips = [entry[0].rsplit(":", 1)[0] for entry in hosts]
        return max(1, ips.count(ips[rank])) if len(ips) == size else 1
    except (KeyError, OSError, ValueError, IndexError, TypeError, AttributeError):
        return 1


def _init():
    """`mx.distributed.init()`, or None for a job of one that it refuses: mlx.launch -n 1
    hands the process an empty hostfile."""
    try:
        return mx.distributed.init()
    except RuntimeError as err:
        hostfile = os.environ.get("MLX_HOSTFILE", "")
        if hostfile and Path(hostfile).is_file() and not Path(hostfile).read_text().strip():
            return None
        raise SpecializeError(f"could not join the distributed job ({_detail(err)}); check the "
                              "hostfile and that every process was started with it") from None


def world() -> World:
    """The job's processes (initialised once; `SOLO` inside `solo()`)."""
    global _world
    if _solo_depth:
        return SOLO
    if _world is None:
        group = _init() if mx.distributed.is_available() else None
        if group is None or group.size() == 1:
            _world = SOLO
        else:
            _world = World(group, group.rank(), group.size(), _local_size(group.rank(), group.size()))
            _install_sigterm_handler(_world)
    return _world


@contextlib.contextmanager
def solo():
    """Run the body as a job of one process (expert-parallel training: each process
    trains its own experts with no communication at all)."""
    global _solo_depth
    _solo_depth += 1
    try:
        yield SOLO
    finally:
        _solo_depth -= 1


# ---- collectives (no-ops for one process) ---------------------------------------
def all_sum(x: mx.array, w: World | None = None) -> mx.array:
    w = w or world()
    return x if w.size == 1 else mx.distributed.all_sum(x, group=w.group)


def broadcast_tree(tree, w: World | None = None, root: int = 0):
    """Rank `root`'s arrays on every rank (a tree of arrays, same shapes everywhere)."""
    w = w or world()
    if w.size == 1:
        return tree
    if isinstance(tree, mx.array):
        out = mx.distributed.all_sum(tree if w.rank == root else mx.zeros_like(tree), group=w.group)
        mx.eval(out)
        return out
    # One array at a time, in sorted key order: every rank issues the same collectives in
    # the same order, whatever the order of its dictionaries.
    flat = sorted(tree_flatten(tree), key=lambda kv: kv[0])
    return tree_unflatten([(k, broadcast_tree(v, w, root)) for k, v in flat])


def broadcast_bytes(data: bytes | None, w: World | None = None, root: int = 0) -> bytes:
    """Rank `root`'s `data` on every rank (others pass None)."""
    w = w or world()
    if w.size == 1:
        return data
    mine = w.rank == root
    n = int(broadcast_tree(mx.array([len(data) if mine else 0], dtype=mx.int32), w, root).item())
    buf = np.frombuffer(data, np.uint8) if mine else np.zeros(n, np.uint8)
    return bytes(np.array(broadcast_tree(mx.array(buf), w, root)))  # 0 + b == b: no overflow


def broadcast_json(obj, w: World | None = None, root: int = 0):
    """Rank `root`'s JSON-serialisable `obj` on every rank."""
    w = w or world()
    if w.size == 1:
        return obj
    data = json.dumps(obj).encode() if w.rank == root else None
    return json.loads(broadcast_bytes(data, w, root).decode())


def gather_json(obj, w: World | None = None) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    w = w or world()
    return [obj] if w.size == 1 else [broadcast_json(obj, w, root) for root in range(w.size)]


def barrier(w: World | None = None) -> None:
    w = w or world()
    if w.size > 1:
        mx.eval(mx.distributed.all_sum(mx.zeros(1), group=w.group))


def agree(error: str | None, w: World | None = None) -> None:
    """Raise rank 0's `error` (a SpecializeError message) on every rank, so a check made
    by rank 0 alone stops the whole job instead of leaving the others waiting."""
    error = broadcast_json(error, w)
    if error:
        raise SpecializeError(error)


def same_everywhere(value: str, what: str, w: World | None = None) -> None:
    """Refuse, on every rank, a job whose processes disagree on `value` (a fingerprint)."""
    w = w or world()
    if w.size == 1:
        return
    ours = broadcast_json(value, w)
    differ = int(all_sum(mx.array([int(ours != value)], dtype=mx.int32), w).item())
    if differ:
        raise SpecializeError(f"{differ} of {w.size} processes have another {what} than rank 0; "
                              "give every host the same files")


def share_files(folder, names: list[str], w: World | None = None) -> None:
    """Make every rank hold `folder/name` for each of `names`: a file some ranks lack is
    sent by the lowest rank that has it and written atomically by the others (nothing
    moves when they share a disk). Every name must exist on at least one rank."""
    from .files import atomic_write_bytes

    w = w or world()
    if w.size == 1:
        return
    folder = Path(folder)
    held = gather_json([n for n in names if (folder / n).exists()], w)
    for name in names:
        holders = [r for r in range(w.size) if name in held[r]]
        if not holders:
            raise SpecializeError(f"no process has {folder / name}")
        if len(holders) == w.size:
            continue
        data = broadcast_bytes((folder / name).read_bytes() if w.rank == holders[0] else None, w, holders[0])
        if w.rank not in holders:
            atomic_write_bytes(folder / name, data)


# ---- failures ---------------------------------------------------------------------
def is_peer_lost(err: BaseException) -> bool:
    """Whether an exception is the distributed backend losing a peer."""
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("[ring]", "[mpi]", "[nccl]", "[jaccl]", "connection to a peer"))


def peer_lost_message(w: World, err: BaseException, step: int | None = None) -> str:
    where = f" at step {step}" if step is not None else ""
    return (f"rank {w.rank}: lost the connection to another process of the job{where} "
            f"({_detail(err)}); it probably died. Whatever was written is intact: "
            "rerun the same command (with --resume for training)")


def _detail(err: BaseException) -> str:
    """The first line of a backend's error, without its `[ring]`-style tag (which the
    terminal's markup would eat anyway)."""
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", str(err).splitlines()[0] if str(err) else type(err).__name__)


def _install_sigterm_handler(w: World) -> None:
    """mlx.launch terminates the other processes when one fails: say so in one line."""

    def handler(signum, frame):
        sys.stderr.write(f"error: rank {w.rank}: stopped by the launcher because another process of the job "
                         "failed; rerun the same command with --resume\n")
        sys.stderr.flush()
        os._exit(143)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def timeout_s() -> float:
    value = os.environ.get("MLXSPEC_DIST_TIMEOUT", "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise SpecializeError(f"MLXSPEC_DIST_TIMEOUT must be a number of seconds, not '{value}'") from None


class Watchdog:
    """Ends a distributed process that makes no progress for `timeout` seconds (a hung
    peer blocks collectives forever). `beat(step)` marks progress; a no-op alone.

    Used as a context manager around the training loop."""

    def __init__(self, w: World, timeout: float | None = None):
        self.w, self.timeout = w, timeout if timeout is not None else timeout_s()
        self.step, self.last = 0, time.monotonic()
        self._stop = threading.Event()
        self._thread = None

    def beat(self, step: int) -> None:
        self.step, self.last = step, time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout / 4)):
            idle = time.monotonic() - self.last
            if idle > self.timeout:
                sys.stderr.write(
                    f"error: rank {self.w.rank}: no progress at step {self.step} for {idle:.0f} s: a peer process "
                    "probably died or hangs; the last checkpoint is intact, rerun the same command with --resume "
                    "(MLXSPEC_DIST_TIMEOUT sets the limit)\n")
                sys.stderr.flush()
                os._exit(3)

    def __enter__(self) -> "Watchdog":
        if self.w.size > 1 and self.timeout > 0:
            self.last = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="mlxspec-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
