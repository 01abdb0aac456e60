import os
import tempfile

from cloudpool import CloudPoolExecutor, objects


def square(x):
    return x * x


def count_lines(part):                                   # part: one byte range of one object
    return sum(1 for _line in part)                      # whole lines only, never split


if __name__ == "__main__":                               # needed where workers are spawned (macOS, Windows)
    with CloudPoolExecutor() as ex:                      # local processes, local-disk "bucket"
        print(ex.submit(square, 7).result())             # 49
        print(list(ex.map(square, range(10))))           # results in order, as in the stdlib

        with tempfile.TemporaryDirectory() as logs:      # a folder stands in for a bucket here
            for day in range(3):
                with open(os.path.join(logs, f"day{day}.log"), "w") as f:
                    f.writelines(f"request {n}\n" for n in range(100_000))
            parts = objects(logs + "/", chunk_size="256KiB")    # byte ranges of every file under the prefix
            print(sum(ex.map(count_lines, parts)))       # 300000
