"""The Redis-backed primitives of ``cloudpool.multiprocessing``, across real processes.

Every test runs against a real ``redis-server`` started by ``tests.servers`` and, for
the cross-process behaviour, real cloudpool workers (a ``Pool`` on the local backend,
whose worker processes get the primitives pickled -- URL and key names only). Each
blocking operation is checked to block, to time out and to raise as the stdlib's does,
within a bound.
"""
from __future__ import annotations

import gc
import os
import pickle
import queue
import threading
import time
import unittest
from threading import BrokenBarrierError
from unittest import mock

import cloudpool.multiprocessing as mp
from cloudpool.multiprocessing import _redis
from tests.servers import redis_server

BOUND = 20.0  # seconds: nothing here may take longer to block, wake or fail


def setUpModule() -> None:
    global REDIS
    REDIS = redis_server()
    mp.set_redis_url(REDIS.url)


def tearDownModule() -> None:
    mp.set_redis_url(None)


def _client():
    import redis

    return redis.Redis.from_url(REDIS.url)


# ---------------------------------------------------------------------------- worker functions
def put_items(q, worker, n):
    for i in range(n):
        q.put((worker, i))
    return worker


def put_with_timeout(q, item, timeout):
    try:
        q.put(item, timeout=timeout)
    except queue.Full:
        return "full"
    return "put"


def consume_joinable(q, n):
    got = []
    for _ in range(n):
        got.append(q.get(timeout=BOUND))
        time.sleep(0.05)
        q.task_done()
    return got


def hold_lock(lock, held, seconds):
    with lock:
        held.set()
        time.sleep(seconds)
        return time.monotonic()


def try_lock(lock, held, timeout):
    if not held.wait(BOUND):
        return "never held"
    t0 = time.monotonic()
    got = lock.acquire(timeout=timeout)
    waited = time.monotonic() - t0
    if got:
        lock.release()
    return got, waited


def blocking_lock(lock, held):
    if not held.wait(BOUND):
        return "never held"
    with lock:
        return time.monotonic()


def count_concurrency(sem, current, peak, seconds):
    with sem:
        with current.get_lock():
            current.value += 1
            with peak.get_lock():
                peak.value = max(peak.value, current.value)
        time.sleep(seconds)
        with current.get_lock():
            current.value -= 1
    return True


def wait_event(event, timeout):
    return event.wait(timeout)


def wait_condition(cond, ns, timeout):
    with cond:
        return cond.wait_for(lambda: ns.ready, timeout)


def barrier_wait(barrier, timeout=None):
    return barrier.wait(timeout)


def barrier_expect_broken(barrier, timeout):
    try:
        barrier.wait(timeout)
    except BrokenBarrierError:
        return "broken"
    return "passed"


def increment(value, n):
    for _ in range(n):
        with value.get_lock():
            value.value += 1
    return True


def fill_array(arr, index, value):
    arr[index] = value
    return True


def update_managed(d, lst, ns, worker):
    d[worker] = worker * 10
    lst.append(worker)
    setattr(ns, f"w{worker}", True)
    return worker


def pipe_echo(conn, n):
    for _ in range(n):
        msg = conn.recv()
        conn.send(("echo", msg))
    return True


def mark_barrier_action(flag):
    flag.value += 1


# ---------------------------------------------------------------------------- base
class WorkersTestCase(unittest.TestCase):
    """A Pool of 4 local workers shared by the class (the primitives' peers)."""

    workers = 4

    @classmethod
    def setUpClass(cls) -> None:
        cls.pool = mp.Pool(cls.workers)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.pool.terminate()
        cls.pool.join()


# ---------------------------------------------------------------------------- queues
class QueueTest(WorkersTestCase):
    def test_queue_fed_by_workers_drained_by_client(self):
        q = mp.Queue()
        results = [self.pool.apply_async(put_items, (q, w, 25)) for w in range(4)]
        got = [q.get(timeout=BOUND) for _ in range(100)]
        self.assertEqual(sorted(got), sorted((w, i) for w in range(4) for i in range(25)))
        for w in range(4):  # FIFO per producer
            self.assertEqual([i for ww, i in got if ww == w], list(range(25)))
        self.assertEqual(sorted(r.get(BOUND) for r in results), [0, 1, 2, 3])
        self.assertTrue(q.empty())
        self.assertEqual(q.qsize(), 0)

    def test_get_times_out_with_empty(self):
        q = mp.Queue()
        t0 = time.monotonic()
        with self.assertRaises(queue.Empty):
            q.get(timeout=0.3)
        self.assertGreaterEqual(time.monotonic() - t0, 0.28)
        with self.assertRaises(queue.Empty):
            q.get_nowait()
        with self.assertRaises(queue.Empty):
            q.get(block=False)

    def test_bounded_put_blocks_in_worker_until_client_drains(self):
        q = mp.Queue(maxsize=2)
        q.put("a")
        q.put("b")
        self.assertTrue(q.full())
        with self.assertRaises(queue.Full):
            q.put_nowait("c")
        with self.assertRaises(queue.Full):
            q.put("c", timeout=0.2)
        # A worker's put blocks while the queue is full, and lands once there is room.
        res = self.pool.apply_async(put_with_timeout, (q, "c", BOUND))
        time.sleep(0.5)
        self.assertFalse(res.ready())
        self.assertEqual(q.get(timeout=BOUND), "a")
        self.assertEqual(res.get(BOUND), "put")
        self.assertEqual([q.get(timeout=BOUND), q.get(timeout=BOUND)], ["b", "c"])
        # A put that times out drops nothing and takes no slot.
        q.put(1)
        q.put(2)
        self.assertEqual(self.pool.apply(put_with_timeout, (q, 3, 0.2)), "full")
        self.assertEqual([q.get_nowait(), q.get_nowait()], [1, 2])
        self.assertTrue(q.empty())
        self.assertFalse(q.full())

    def test_many_producers_on_a_bounded_queue_lose_nothing(self):
        q = mp.Queue(maxsize=3)
        results = [self.pool.apply_async(put_items, (q, w, 20)) for w in range(4)]
        got = [q.get(timeout=BOUND) for _ in range(80)]
        self.assertEqual(len(set(got)), 80)
        for r in results:
            r.get(BOUND)
        self.assertTrue(q.empty())

    def test_closed_handle(self):
        q = mp.Queue()
        other = pickle.loads(pickle.dumps(q))
        q.close()
        with self.assertRaisesRegex(ValueError, "is closed"):
            q.put(1)
        with self.assertRaisesRegex(ValueError, "is closed"):
            q.get()
        q.join_thread()
        other.put(1)  # other handles are unaffected
        self.assertEqual(other.get(timeout=BOUND), 1)
        with self.assertRaises(AssertionError):
            other.join_thread()  # only after close(), as the stdlib

    def test_unpicklable_item_raises_in_put(self):
        q = mp.Queue()
        with self.assertRaises(TypeError):
            q.put(threading.Lock())
        self.assertTrue(q.empty())

    def test_simple_queue(self):
        q = mp.SimpleQueue()
        self.pool.apply(put_items, (q, 9, 3))  # fed by a worker
        self.assertFalse(q.empty())
        self.assertEqual([q.get() for _ in range(3)], [(9, 0), (9, 1), (9, 2)])
        self.assertTrue(q.empty())
        q2 = pickle.loads(pickle.dumps(q))
        q2.put("x")
        self.assertEqual(q.get(), "x")
        q.close()
        with self.assertRaises(ValueError):
            q.put(1)

    def test_joinable_queue_join_waits_for_workers(self):
        q = mp.JoinableQueue()
        for i in range(6):
            q.put(i)
        consumers = [self.pool.apply_async(consume_joinable, (q, 3)) for _ in range(2)]
        t0 = time.monotonic()
        q.join()  # returns only after six task_done() calls in the workers
        self.assertGreater(time.monotonic() - t0, 0.1)
        self.assertEqual(sorted(sum((c.get(BOUND) for c in consumers), [])), list(range(6)))
        with self.assertRaisesRegex(ValueError, "too many times"):
            q.task_done()
        q.join()  # nothing unfinished: returns at once


# ---------------------------------------------------------------------------- locks
class LockTest(WorkersTestCase):
    def test_lock_held_by_one_worker_blocks_another(self):
        lock, held = mp.Lock(), mp.Event()
        holder = self.pool.apply_async(hold_lock, (lock, held, 1.0))
        got, waited = self.pool.apply(try_lock, (lock, held, 0.3))
        self.assertFalse(got)
        self.assertGreaterEqual(waited, 0.28)
        later = self.pool.apply_async(blocking_lock, (lock, held))
        released_at = holder.get(BOUND)
        acquired_at = later.get(BOUND)
        self.assertGreaterEqual(acquired_at, released_at)
        self.assertTrue(lock.acquire(timeout=BOUND))
        lock.release()

    def test_lock_semantics(self):
        lock = mp.Lock()
        self.assertTrue(lock.acquire())
        self.assertFalse(lock.acquire(False))
        self.assertFalse(lock.acquire(timeout=0.1))
        self.assertFalse(lock.acquire(timeout=-1))  # negative timeouts mean 0
        lock.release()
        with self.assertRaisesRegex(ValueError, "released too many times"):
            lock.release()
        with lock:
            self.assertIn("owner=thread", repr(lock))
        # Any thread may release a Lock (not an RLock), as with the stdlib.
        lock.acquire()
        t = threading.Thread(target=lock.release)
        t.start()
        t.join()
        self.assertTrue(lock.acquire(False))
        lock.release()

    def test_waiters_are_served_in_order_and_a_timed_out_waiter_leaves_no_trace(self):
        lock = mp.Lock()
        lock.acquire()
        order = []

        def waiter(i):
            with lock:
                order.append(i)

        self.assertFalse(lock.acquire(timeout=0.2))  # queued, timed out, removed from the queue
        threads = []
        for i in range(3):
            t = threading.Thread(target=waiter, args=(i,))
            t.start()
            threads.append(t)
            time.sleep(0.2)  # so they queue in order
        lock.release()
        for t in threads:
            t.join(BOUND)
        self.assertEqual(order, [0, 1, 2])
        self.assertTrue(lock.acquire(False))

    def test_rlock(self):
        r = mp.RLock()
        self.assertTrue(r.acquire())
        self.assertTrue(r.acquire())
        r.release()
        result = []
        t = threading.Thread(target=lambda: result.append(r.acquire(timeout=0.2)))
        t.start()
        t.join()
        self.assertEqual(result, [False])  # still held once by the main thread
        t = threading.Thread(target=lambda: result.append(self.assertRaises(AssertionError, r.release)))
        t.start()
        t.join()
        r.release()
        with self.assertRaisesRegex(AssertionError, "not owned"):
            r.release()
        # Another process can take it once released.
        held = mp.Event()
        self.assertEqual(self.pool.apply(hold_lock, (r, held, 0.0)) > 0, True)

    def test_semaphore_bounds_concurrency_across_workers(self):
        sem = mp.Semaphore(2)
        current, peak = mp.Value("i", 0), mp.Value("i", 0)
        self.assertTrue(all(self.pool.map(count_concurrency_star, [(sem, current, peak, 0.4)] * 4, chunksize=1)))
        self.assertEqual(peak.value, 2)
        self.assertEqual(current.value, 0)
        self.assertEqual(sem.get_value(), 2)

    def test_semaphore_and_bounded_semaphore(self):
        s = mp.Semaphore(0)
        self.assertFalse(s.acquire(timeout=0.1))
        s.release()
        s.release()  # unbounded
        self.assertEqual(s.get_value(), 2)
        b = mp.BoundedSemaphore(2)
        b.acquire()
        b.release()
        with self.assertRaisesRegex(ValueError, "released too many times"):
            b.release()
        with self.assertRaises(ValueError):
            mp.Semaphore(-1)
        self.assertIn("value=2", repr(s))


def count_concurrency_star(args):
    return count_concurrency(*args)


# ---------------------------------------------------------------------------- events, conditions, barriers
class EventConditionBarrierTest(WorkersTestCase):
    def test_event_set_by_client_wakes_every_worker(self):
        event = mp.Event()
        waiting = [self.pool.apply_async(wait_event, (event, BOUND)) for _ in range(3)]
        time.sleep(0.5)
        self.assertFalse(any(r.ready() for r in waiting))
        t0 = time.monotonic()
        event.set()
        self.assertEqual([r.get(BOUND) for r in waiting], [True, True, True])
        self.assertLess(time.monotonic() - t0, 5)
        self.assertTrue(event.is_set())
        self.assertTrue(event.wait(0))
        event.clear()
        self.assertFalse(event.is_set())
        self.assertFalse(self.pool.apply(wait_event, (event, 0.2)))

    def test_condition_notify_wakes_a_worker_waiting_for_a_predicate(self):
        cond = mp.Condition()
        manager = mp.Manager()
        self.addCleanup(manager.shutdown)
        ns = manager.Namespace(ready=False)
        waiting = self.pool.apply_async(wait_condition, (cond, ns, BOUND))
        time.sleep(0.5)
        self.assertFalse(waiting.ready())
        with cond:
            ns.ready = True
            cond.notify_all()
        self.assertTrue(waiting.get(BOUND))

    def test_condition_semantics(self):
        cond = mp.Condition(mp.Lock())
        with self.assertRaisesRegex(AssertionError, "must acquire"):
            cond.wait(0.1)
        with self.assertRaisesRegex(AssertionError, "not owned"):
            cond.notify()
        with cond:
            t0 = time.monotonic()
            self.assertFalse(cond.wait(0.2))
            self.assertGreaterEqual(time.monotonic() - t0, 0.18)
            self.assertFalse(cond.wait_for(lambda: False, 0.1))
        with self.assertRaises(TypeError):
            mp.Condition(threading.Lock())

    def test_barrier_of_n_workers(self):
        flag = mp.Value("i", 0)
        barrier = mp.Barrier(4, action=lambda: mark_barrier_action(flag), timeout=BOUND)
        indices = self.pool.map(barrier_wait, [barrier] * 4, chunksize=1)
        self.assertEqual(sorted(indices), [0, 1, 2, 3])
        self.assertEqual(flag.value, 1)  # the action ran once, in the last to arrive
        # The barrier is reusable.
        self.assertEqual(sorted(self.pool.map(barrier_wait, [barrier] * 4, chunksize=1)), [0, 1, 2, 3])
        self.assertEqual(flag.value, 2)
        self.assertEqual(barrier.n_waiting, 0)
        self.assertFalse(barrier.broken)

    def test_barrier_timeout_breaks_it_for_everyone(self):
        barrier = mp.Barrier(3)
        other = self.pool.apply_async(barrier_expect_broken, (barrier, BOUND))
        time.sleep(0.3)
        with self.assertRaises(BrokenBarrierError):
            barrier.wait(0.3)  # only two of three arrive
        self.assertEqual(other.get(BOUND), "broken")
        self.assertTrue(barrier.broken)
        with self.assertRaises(BrokenBarrierError):
            barrier.wait(0.1)
        barrier.reset()
        self.assertFalse(barrier.broken)
        self.assertEqual(barrier.parties, 3)

    def test_barrier_abort(self):
        barrier = mp.Barrier(2)
        waiting = self.pool.apply_async(barrier_expect_broken, (barrier, BOUND))
        time.sleep(0.3)
        self.assertEqual(barrier.n_waiting, 1)
        barrier.abort()
        self.assertEqual(waiting.get(BOUND), "broken")
        with self.assertRaises(ValueError):
            mp.Barrier(0)


# ---------------------------------------------------------------------------- shared memory
class ValueArrayTest(WorkersTestCase):
    def test_value_incremented_by_workers_under_its_lock(self):
        v = mp.Value("i", 0)
        self.pool.map(increment_star, [(v, 25)] * 4, chunksize=1)
        self.assertEqual(v.value, 100)

    def test_value_types(self):
        self.assertEqual(mp.Value("d", 1.5).value, 1.5)
        self.assertEqual(mp.Value("c", b"x").value, b"x")
        import ctypes

        self.assertEqual(mp.Value(ctypes.c_bool, True).value, True)
        self.assertEqual(mp.Value("i").value, 0)
        overflow = mp.Value("b", 0)
        overflow.value = 200  # wraps as a C signed char does
        self.assertEqual(overflow.value, 200 - 256)
        raw = mp.RawValue("l", 7)
        self.assertFalse(hasattr(raw, "get_lock"))
        self.assertEqual(mp.Value("i", 3, lock=False).value, 3)
        with self.assertRaises(ValueError):
            mp.Value("?bad", 0)
        with self.assertRaises(TypeError):
            mp.Value("i", 0, lock=threading.Lock())

    def test_array_written_by_workers(self):
        arr = mp.Array("i", 8)
        self.pool.starmap(fill_array, [(arr, i, i * i) for i in range(8)])
        self.assertEqual(arr[:], [i * i for i in range(8)])
        self.assertEqual(arr[-1], 49)
        self.assertEqual(arr[1:7:2], [1, 9, 25])
        arr[::2] = [0, 0, 0, 0]
        self.assertEqual(list(arr), [0, 1, 0, 9, 0, 25, 0, 49])
        with self.assertRaises(IndexError):
            arr[8]
        with self.assertRaises(ValueError):
            arr[0:2] = [1]
        chars = mp.Array("c", b"hi\x00there")
        self.assertEqual(chars.value, b"hi")
        self.assertEqual(chars.raw, b"hi\x00there")
        chars.value = b"yo"
        self.assertEqual(chars[:2], b"yo")  # a c_char array slices to bytes, as ctypes does
        self.assertEqual(chars[1], b"o")
        with chars.get_lock():
            self.assertEqual(len(chars), 8)
        self.assertEqual(mp.RawArray("d", [0.5, 1.5])[:], [0.5, 1.5])


def increment_star(args):
    return increment(*args)


# ---------------------------------------------------------------------------- pipes
class PipeTest(WorkersTestCase):
    def test_duplex_pipe_between_client_and_worker(self):
        here, there = mp.Pipe()
        echo = self.pool.apply_async(pipe_echo, (there, 3))
        there.close()  # the usual idiom: the parent closes the child's end; the child's copy works
        for i in range(3):
            here.send({"n": i})
            self.assertTrue(here.poll(BOUND))
            self.assertEqual(here.recv(), ("echo", {"n": i}))
        self.assertTrue(echo.get(BOUND))
        self.assertFalse(here.poll(0.1))

    def test_one_way_pipe_and_bytes(self):
        reader, writer = mp.Pipe(duplex=False)
        with self.assertRaisesRegex(OSError, "read-only"):
            reader.send(1)
        with self.assertRaisesRegex(OSError, "write-only"):
            writer.recv()
        writer.send_bytes(b"0123456789", 2, 3)
        self.assertEqual(reader.recv_bytes(), b"234")
        writer.send_bytes(b"abcdef")
        with self.assertRaisesRegex(OSError, "bad message length"):
            reader.recv_bytes(maxlength=3)
        writer.send_bytes(b"xyz")
        reader2 = pickle.loads(pickle.dumps(reader))
        buf = bytearray(5)
        self.assertEqual(reader2.recv_bytes_into(buf, 1), 3)
        self.assertEqual(bytes(buf), b"\x00xyz\x00")
        writer.send_bytes(b"too long")
        with self.assertRaises(mp.BufferTooShort):
            reader2.recv_bytes_into(bytearray(2))
        writer.close()
        with self.assertRaisesRegex(OSError, "handle is closed"):
            writer.send(1)
        self.assertFalse(reader2.poll(0.2))


# ---------------------------------------------------------------------------- managers
class ManagerTest(WorkersTestCase):
    def test_dict_list_namespace_updated_by_workers(self):
        with mp.Manager() as m:
            d, lst, ns = m.dict(), m.list(), m.Namespace()
            self.assertEqual(sorted(self.pool.starmap(update_managed, [(d, lst, ns, w) for w in range(4)])),
                             [0, 1, 2, 3])
            self.assertEqual(d.copy(), {0: 0, 1: 10, 2: 20, 3: 30})
            self.assertEqual(sorted(lst), [0, 1, 2, 3])
            self.assertTrue(all(getattr(ns, f"w{w}") for w in range(4)))
            prefix = m._scope.prefix
        # shutdown deleted every key of the manager
        self.assertEqual(list(_client().scan_iter(match=prefix + "*")), [])
        with self.assertRaises(mp.SharedStateLostError):
            d["x"] = 1
        with self.assertRaises(ValueError):
            m.dict()

    def test_dict_api(self):
        m = mp.Manager()
        self.addCleanup(m.shutdown)
        d = m.dict({"a": 1}, b=2)
        d["c"] = 3
        d["a"] = 10  # keeps its place
        self.assertEqual(d.keys(), ["a", "b", "c"])
        self.assertEqual(d.values(), [10, 2, 3])
        self.assertEqual(len(d), 3)
        self.assertIn("a", d)
        self.assertEqual(d.get("zz", 5), 5)
        with self.assertRaises(KeyError):
            d["zz"]
        self.assertEqual(d.setdefault("e", []), [])
        self.assertEqual(d.setdefault("e", [1]), [])
        self.assertEqual(d.pop("b"), 2)
        self.assertEqual(d.pop("b", None), None)
        self.assertEqual(d.popitem(), ("e", []))
        del d["c"]
        with self.assertRaises(KeyError):
            del d["c"]
        d.update([("x", 1)], y=2)
        self.assertEqual(dict(d.items()), {"a": 10, "x": 1, "y": 2})
        self.assertEqual(list(d), ["a", "x", "y"])
        self.assertEqual(str(d), "{'a': 10, 'x': 1, 'y': 2}")
        d.clear()
        self.assertEqual(len(d), 0)
        with self.assertRaises(KeyError):
            d.popitem()

    def test_list_api(self):
        m = mp.Manager()
        self.addCleanup(m.shutdown)
        lst = m.list([3, 1, 2])
        lst.append(5)
        lst.extend([4])
        lst.sort()
        self.assertEqual(lst[:], [1, 2, 3, 4, 5])
        lst.insert(0, 0)
        lst[1] = "one"
        del lst[2]
        self.assertEqual(lst.copy(), [0, "one", 3, 4, 5])
        self.assertEqual(lst.pop(), 5)
        self.assertEqual(lst.pop(0), 0)
        self.assertEqual(lst.pop(1), 3)
        lst.remove("one")
        self.assertEqual(lst[:], [4])
        lst += [4, 6]
        self.assertEqual(lst.count(4), 2)
        self.assertEqual(lst.index(6), 2)
        lst.reverse()
        self.assertEqual(lst[-1], 4)
        self.assertEqual(lst + [7], [6, 4, 4, 7])
        with self.assertRaises(IndexError):
            lst[10]
        with self.assertRaises(IndexError):
            lst[10] = 1
        with self.assertRaises(ValueError):
            lst.remove("absent")
        while len(lst):
            lst.pop()
        with self.assertRaisesRegex(IndexError, "empty"):
            lst.pop()

    def test_namespace_value_and_other_factories(self):
        m = mp.Manager()
        self.addCleanup(m.shutdown)
        n = m.Namespace()
        n.name = "Bob"
        n.job = "Builder"
        n._hidden = "hidden"  # names with _ stay on the proxy, as in the stdlib
        del n.job
        self.assertEqual(str(n), "Namespace(name='Bob')")
        self.assertFalse(hasattr(n, "job"))
        with self.assertRaises(AttributeError):
            del n.job
        v = m.Value("i", 1)
        v.value = {"any": "object"}  # a manager Value holds any picklable object
        self.assertEqual(v.get(), {"any": "object"})
        a = m.Array("i", [1, 2])
        self.assertEqual(a[:], [1, 2])
        q = m.Queue()
        q.put(1)
        self.assertEqual(q.get(timeout=BOUND), 1)
        for make in (m.Lock, m.RLock, m.Semaphore, m.BoundedSemaphore, m.Event, m.Condition, m.JoinableQueue):
            make()
        self.assertEqual(m.Barrier(2).parties, 2)
        with self.assertRaises(TypeError):
            pickle.dumps(m)


# ---------------------------------------------------------------------------- configuration, keys, failures
class RedisConfigurationTest(unittest.TestCase):
    def test_no_redis_configured_names_the_settings(self):
        mp.set_redis_url(None)
        self.addCleanup(mp.set_redis_url, REDIS.url)
        with mock.patch.dict(os.environ, {}, clear=False):
            os.environ.pop("CLOUDPOOL_REDIS_URL", None)
            with mock.patch.object(_redis, "_url_from_config", return_value=None):
                with self.assertRaises(mp.RedisNotConfiguredError) as cm:
                    mp.Lock()
        self.assertIsInstance(cm.exception, ValueError)
        self.assertIn("CLOUDPOOL_REDIS_URL", str(cm.exception))
        self.assertIn("set_redis_url", str(cm.exception))

    def test_env_var_is_used(self):
        mp.set_redis_url(None)
        self.addCleanup(mp.set_redis_url, REDIS.url)
        with mock.patch.dict(os.environ, {"CLOUDPOOL_REDIS_URL": REDIS.url}):
            e = mp.Event()
        self.assertEqual(e._ref.url, REDIS.url)
        with mock.patch.dict(os.environ, {"CLOUDPOOL_REDIS_URL": "http://nope"}):
            with self.assertRaisesRegex(ValueError, "CLOUDPOOL_REDIS_URL"):
                mp.Event()

    def test_bad_settings(self):
        with self.assertRaises(ValueError):
            mp.set_redis_url("localhost:6379")
        with self.assertRaises(ValueError):
            mp.set_redis_url(REDIS.url, key_ttl=0)

    def test_objects_pickle_their_url_and_keys_only(self):
        lock = mp.Lock()
        data = pickle.dumps(lock)
        self.assertLess(len(data), 400)
        self.assertNotIn(b"socket", data)
        copy = pickle.loads(data)
        self.assertEqual(copy, lock)
        copy.acquire()
        self.assertFalse(lock.acquire(False))  # the same lock
        copy.release()

    def test_keys_are_namespaced_and_expire(self):
        mp.set_redis_url(REDIS.url, key_ttl=100)
        self.addCleanup(mp.set_redis_url, REDIS.url)
        q = mp.Queue()
        q.put(1)
        c = _client()
        keys = [k.decode() for k in c.scan_iter(match=q._ref.prefix + "*")]
        self.assertTrue(keys)
        self.assertTrue(all(k.startswith("cloudpool:mp:queue:") for k in keys))
        for k in keys:
            self.assertTrue(0 < c.pttl(k) <= 100_000, k)

    def test_dropped_object_expires_soon_unless_used(self):
        e = mp.Event()
        key = e._ref.key("f")
        c = _client()
        self.assertGreater(c.ttl(key), _redis.ORPHAN_GRACE)
        del e
        gc.collect()
        self.assertLessEqual(c.ttl(key), _redis.ORPHAN_GRACE)

    def test_deleted_state_raises_instead_of_hanging(self):
        lock = mp.Lock()
        lock.acquire()
        c = _client()
        threading.Timer(0.3, lambda: c.delete(lock._ref.key("v"))).start()
        t0 = time.monotonic()
        with self.assertRaises(mp.SharedStateLostError):
            lock.acquire(timeout=BOUND)
        self.assertLess(time.monotonic() - t0, _redis.WAIT_SLICE + 5)
        q = mp.Queue()
        c.delete(q._ref.key("m"))
        with self.assertRaises(mp.SharedStateLostError):
            q.put(1)

    def test_unreachable_redis_is_a_connection_error(self):
        from tests.servers import free_port

        mp.set_redis_url(f"redis://127.0.0.1:{free_port()}/0")
        self.addCleanup(mp.set_redis_url, REDIS.url)
        with self.assertRaises(ConnectionError) as cm:
            mp.Event()
        self.assertIn("cannot reach the Redis server", str(cm.exception))

    def test_a_killed_waiter_does_not_swallow_a_release(self):
        lock = mp.Lock()
        lock.acquire()
        # Simulate a waiter that died while queued: in the queue, lease expired.
        c = _client()
        c.rpush(lock._ref.key("q"), lock._ref.key("w:dead"))
        lock.release()  # skips the dead waiter
        self.assertTrue(lock.acquire(timeout=1))
        lock.release()


if __name__ == "__main__":
    unittest.main()
