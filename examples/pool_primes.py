"""Count primes with a plain ``multiprocessing.Pool`` program, on cloudpool or the stdlib.

    python examples/pool_primes.py [LIMIT]             # cloudpool.multiprocessing (the default)
    python examples/pool_primes.py --stdlib [LIMIT]    # the standard library's multiprocessing

This is an ordinary standard-library program (``starmap``, ``map`` with ``chunksize``,
``imap``, ``apply_async``). The one thing that makes it a cloudpool program is the module
``Pool`` comes from, chosen in ``main()``::

    import multiprocessing                                # the standard library
    import cloudpool.multiprocessing as multiprocessing   # cloudpool: same API, same results

In your own program that import line is the whole change. On cloudpool the pool's work
runs on the configured backend (local processes by default; set ``CLOUDPOOL_BACKEND`` /
``CLOUDPOOL_STORAGE`` or the config file to run elsewhere). ``tests/test_examples.py``
runs it both ways and compares the output.
"""
import argparse
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
    parser = argparse.ArgumentParser(description="Count primes with a multiprocessing.Pool program.")
    parser.add_argument("limit", nargs="?", type=int, default=200000, help="count primes below this")
    parser.add_argument("--stdlib", action="store_true",
                        help="use the standard library's multiprocessing instead of cloudpool.multiprocessing")
    args = parser.parse_args()
    if args.stdlib:
        import multiprocessing
    else:
        import cloudpool.multiprocessing as multiprocessing
    limit = args.limit
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
    print(f"pool: {multiprocessing.__name__}.Pool")
    print(f"primes below {limit}: {sum(counts)}")
    print(f"primes per {step}-block: {counts[:5]} ...")
    print(f"largest primes below 10, 100, 1000, 10000, {limit}: {largest}")
    print(f"twin prime pairs below {limit}: {twins}")
    print(f"primes below 100: {below_100}")
    print(f"time: {elapsed:.2f} s, {limit / elapsed:,.0f} numbers/s")


if __name__ == "__main__":
    main()
