import concurrent.futures
import random
import time

from cloudpool import CloudPoolExecutor
from cloudpool.plot import histogram, timeline


def work(i):
    time.sleep(random.uniform(0.005, 0.05))         # stands in for real work
    if i == 13:
        raise ValueError("unlucky")                 # a failed call is crossed on the timeline
    return i * i


if __name__ == "__main__":
    with CloudPoolExecutor(4) as ex:
        futures = [ex.submit(work, i) for i in range(80)]
        concurrent.futures.wait(futures)
        print(timeline(ex))     # -> ./cloudpool-<executor id>-timeline.png (also takes ex.stats() or futures)
        print(histogram(ex))    # durations, end-to-end latencies, calls per worker
        print(ex.stats().summary()["failed"], "failed")                    # 1 failed
        print(ex.stats().cost(platform="aws_lambda", memory_mb=1024))
