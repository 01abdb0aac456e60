"""Count primes with a plain ``multiprocessing.Pool`` program.

    python examples/pool_primes.py [LIMIT]

This is an ordinary standard-library program. To run it on cloudpool, change only its
import line::

    import multiprocessing                                # before
    import cloudpool.multiprocessing as multiprocessing   # after

and the pool's work runs on the configured backend (local processes by default; set
``CLOUDPOOL_BACKEND`` / ``CLOUDPOOL_STORAGE`` or the config file to run elsewhere).
``tests/test_examples.py`` makes exactly that one-line change and compares the output.
"""
import multiprocessing
import sys
import time


def is_prime(n):
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def count_primes(lo, hi):
    """How many primes in [lo, hi)."""
    return sum(1 for n in range(lo, hi) if is_prime(n))


def largest_prime_below(n):
    while n > 2:
        n -= 1
        if is_prime(n):
            return n
    return None


def twin_pairs(bounds):
    lo, hi = bounds
    return [(p, p + 2) for p in range(lo, hi) if is_prime(p) and is_prime(p + 2)]


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
    step = 10000
    ranges = [(lo, min(lo + step, limit)) for lo in range(0, limit, step)]
    start = time.perf_counter()
    with multiprocessing.Pool(processes=2) as pool:
        counts = pool.starmap(count_primes, ranges)
        largest = pool.map(largest_prime_below, [10, 100, 1000, 10000, limit], chunksize=2)
        twins = 0
        for pairs in pool.imap(twin_pairs, ranges):
            twins += len(pairs)
        pending = pool.apply_async(count_primes, (0, 100))
        below_100 = pending.get(timeout=60)
    elapsed = time.perf_counter() - start
    print(f"primes below {limit}: {sum(counts)}")
    print(f"primes per {step}-block: {counts[:5]} ...")
    print(f"largest primes below 10, 100, 1000, 10000, {limit}: {largest}")
    print(f"twin prime pairs below {limit}: {twins}")
    print(f"primes below 100: {below_100}")
    print(f"time: {elapsed:.2f} s, {limit / elapsed:,.0f} numbers/s")


if __name__ == "__main__":
    main()
