"""runtime.process_pool, the pool of the synthetic-data writer and check_feats: its workers do not
inherit the locks this process's threads hold, a worker that dies is an error rather than a wait
for ever, and stop signals held here are released in the workers."""
import os
import signal
import threading
from concurrent.futures.process import BrokenProcessPool

import pytest

from mmnas import runtime

HELD_BY_A_THREAD = threading.Lock()


def lock_is_free(_):
    """In a worker: can this module's lock be taken? (A forked copy of a held lock never frees.)"""
    if HELD_BY_A_THREAD.acquire(timeout=2):
        HELD_BY_A_THREAD.release()
        return True
    return False


def die(_):
    os.kill(os.getpid(), signal.SIGKILL)


def blocked_stop_signals(_):
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return sorted(int(s) for s in runtime.STOP_SIGNALS if s in blocked)


def test_workers_do_not_inherit_a_lock_another_thread_holds():
    taken, done = threading.Event(), threading.Event()

    def hold():
        with HELD_BY_A_THREAD:
            taken.set()
            done.wait(60)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert taken.wait(10)
        with runtime.process_pool(2) as pool:
            assert list(pool.map(lock_is_free, range(4))) == [True] * 4
    finally:
        done.set()
        holder.join()


def test_a_worker_that_dies_is_an_error_not_a_wait():
    with pytest.raises(BrokenProcessPool):
        with runtime.process_pool(2) as pool:
            list(pool.map(die, range(2)))


def test_stop_signals_held_here_are_released_in_the_workers():
    with runtime.stop_signals_held():
        with runtime.process_pool(1) as pool:
            assert pool.submit(blocked_stop_signals, 0).result(timeout=60) == []
        assert sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []) if s in runtime.STOP_SIGNALS) \
            == sorted(int(s) for s in runtime.STOP_SIGNALS)
