"""Every rank but 0: load this rank's share, then do what rank 0 says.

A follower has no socket, no scheduler, no tokenizer work: it receives
rank 0's ops (``ops.py``) and applies them to its own batch and its share of
the prompt cache, in order. It ends when rank 0 says so (``Shutdown``: exit
0), or with status 1 when the group breaks (rank 0 gone, a link down) or
rank 0 goes silent for ``--stall-timeout`` (it sends a heartbeat every
second when idle). Signals: the first SIGTERM/SIGINT is left to rank 0,
which drains and then stops every rank; a second one ends this rank now.
"""

from __future__ import annotations

import argparse
import copy
import faulthandler
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import Any

from ..watchdog import Progress
from . import ops
from .group import ChannelError
from .launch import Ranks, config_hash

log = logging.getLogger("kmlx.worker.distributed")


class Follower:
    def __init__(self, ranks: Ranks, loaded: Any, model: Any, *, tokenizer_hash: str):
        self.ranks = ranks
        self.loaded = loaded
        self.model = model
        self.tokenizer_hash = tokenizer_hash
        self.channel = ranks.channel
        self.batch: Any = None  # built when rank 0 says how (ops.Hello)
        self.sampler: Any = None
        self.states: dict[int, Any] = {}  # state id -> KVState (None: the sequence was not there)
        self._next_state = 0
        self.progress = Progress()

    # ------------------------------------------------------------------ #
    def run(self) -> int:
        while True:
            self.progress.mark("waiting for rank 0")
            batch = ops.decode(self.channel.broadcast())
            for op in batch:
                self.progress.mark(f"applying {type(op).__name__}")
                if isinstance(op, ops.Shutdown):
                    log.info("rank 0 stopped the group (%s)", op.reason)
                    return 0
                self.apply(op)

    def apply(self, op: ops.Op) -> None:
        if isinstance(op, ops.Step):
            self.states.clear()  # every op that named them came before this step
            for t in self.batch.step().tokens:
                if t.final is not None:
                    self._keep(t.final)
        elif isinstance(op, ops.Add):
            self._add(op)
        elif isinstance(op, ops.Extract):
            self._keep(self.batch.state(op.uid))
        elif isinstance(op, ops.Remove):
            states = self.batch.remove(op.uids, keep_state=op.keep_state)
            if op.keep_state:
                for uid in op.uids:
                    self._keep(states.get(uid))
        elif isinstance(op, ops.Forward):
            self._free_forward(op.tokens)
        elif isinstance(op, ops.Heartbeat):
            pass
        elif isinstance(op, ops.Hello):
            self._hello(op)
        else:  # the prompt cache's ops: rank 0 sends none while a distributed worker caches no prompts
            raise TypeError(f"unexpected op {op!r}")

    def _hello(self, hello: ops.Hello) -> None:
        """Same model, same split as rank 0 — then build the batch it described."""
        from ..batch import Batch
        from .leader import follower_sampler

        mine = {"model": self.loaded.model_id, "tokenizer": self.tokenizer_hash, "config.json": config_hash(self.loaded.path),
                "parallelism": self.ranks.topology.parallelism}
        theirs = {"model": hello.model_id, "tokenizer": hello.tokenizer_hash, "config.json": hello.config_hash,
                  "parallelism": hello.parallelism}
        differ = [k for k in mine if mine[k] != theirs[k]]
        for k in differ:
            log.error("rank %d differs from rank 0 in its %s: %r here, %r there", self.ranks.topology.rank, k, mine[k], theirs[k])
        if not self.channel.agree(not differ):
            raise SystemExit(2)
        self.batch = Batch(self.model, eos_token_ids=self.loaded.tokenizer.eos_token_ids,
                           max_running=hello.max_running, prefill_chunk=hello.prefill_chunk)
        self.sampler = follower_sampler(self.ranks.group)

    def _add(self, op: ops.Add) -> None:
        from ..batch import SequenceSpec

        cache = None if op.cache is None else copy.deepcopy(self._resolve(op.cache))
        uid = self.batch.add(SequenceSpec(
            tokens=op.tokens, max_tokens=op.max_tokens, cache=cache, sampler=self.sampler,
            stop_on_eos=op.stop_on_eos, pauses=op.pauses,
        ))
        if uid != op.uid:
            raise AssertionError(f"this rank's batch numbered a sequence {uid}, rank 0's {op.uid}")

    def _resolve(self, ref: ops.CacheRef) -> Any:
        if not isinstance(ref, ops.StateRef):
            raise LookupError(f"rank 0 named {ref!r}, but a distributed worker caches no prompts")
        state = self.states.get(ref.id)
        if state is None:
            raise LookupError(f"rank 0 named state {ref.id}, which this rank does not hold")
        cache = state.cache
        if ref.length is not None:
            from mlx_lm.models.cache import trim_prompt_cache

            from ..kv.views import cache_length

            held = cache_length(cache)
            if held is not None and held > ref.length:
                cache = copy.deepcopy(cache)
                trim_prompt_cache(cache, held - ref.length)
        return cache

    def _keep(self, state: Any) -> None:
        self.states[self._next_state] = state
        self._next_state += 1

    def _free_forward(self, tokens: list[list[int]]) -> None:
        """Rank 0 ran the model outside the batch (a warm-up): the same here, on a fresh cache."""
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(self.model)
        out = self.model(mx.array(tokens), cache=cache)
        mx.eval(out, [c.state for c in cache])


def run_follower(args: argparse.Namespace, ranks: Ranks) -> int:
    """Load this rank's share and follow rank 0 until it stops the group."""
    from ..model_setup import tokenizer_hash
    from ..models import ModelLoadError, load_model

    guard = _Guard(args.stall_timeout)
    guard.install_signals()
    try:
        loaded = load_model(args.model, vision=False, weights=args.weights, split=ranks.split)
    except ModelLoadError as exc:
        print(f"kmlx-worker (rank {ranks.topology.rank}): {exc}", file=sys.stderr)
        return 2
    model = ranks.rank_model(loaded.model)
    follower = Follower(ranks, loaded, model, tokenizer_hash=tokenizer_hash(loaded.tokenizer))
    guard.watch(follower.progress)
    log.info("%s ready: following rank 0", ranks.topology.describe())
    try:
        return follower.run()
    except ChannelError as exc:
        log.error("leaving: %s", exc)
        return 1
    except SystemExit:
        raise
    except BaseException:
        log.exception("leaving: this rank failed; rank 0 sees the group break and stops too")
        return 1
    finally:
        guard.close()


class _Guard:
    """A follower's watchdog: exits when rank 0 has been silent (or a step
    stuck) for ``stall_timeout``; the second SIGTERM/SIGINT exits now."""

    def __init__(self, stall_timeout: float):
        self.stall_timeout = stall_timeout
        self.progress: Progress | None = None
        self.signals = 0
        self._closed = threading.Event()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._thread = threading.Thread(target=self._run, name="kmlx-rank-guard", daemon=True)
        self._thread.start()

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)  # acted on by the guard thread (the main thread may be in native code)

    def watch(self, progress: Progress) -> None:
        self.progress = progress

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            ready, _, _ = select.select([self._r], [], [], 0.25)
            if ready:
                try:
                    got = os.read(self._r, 64)
                except BlockingIOError:
                    got = b""
                for _ in got:
                    self.signals += 1
                    if self.signals == 1:
                        log.info("signal received: rank 0 drains and stops the group (signal again to leave now)")
                    else:
                        self._exit("a second signal")
            p = self.progress
            if p is not None and self.stall_timeout and time.monotonic() - p.at > self.stall_timeout:
                self._exit(f"no word from rank 0 for {self.stall_timeout:.0f} s ({p.doing})")

    def _exit(self, why: str) -> None:
        log.error("leaving now: %s", why)
        try:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        except Exception:
            pass
        for h in logging.getLogger().handlers:
            h.flush()
        os._exit(1)
