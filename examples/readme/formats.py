import csv
import gzip
import os
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from cloudpool import CloudPoolExecutor, objects


def words(part):                      # compressed text: the part yields decompressed lines
    return sum(len(line.split()) for line in part)


def amount(part):                     # CSV: rows (lists of str), header excluded
    i = part.header.index("amount")
    return sum(int(row[i]) for row in part)


def column_sum(part):                 # Parquet: whole row groups, only column "x" is read
    return sum(part.table()["x"].to_pylist())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d, CloudPoolExecutor() as ex:
        for day in range(4):          # appending makes one gzip member per day, as `cat *.gz` does
            with gzip.open(os.path.join(d, "log.txt.gz"), "at") as f:
                f.writelines(f"GET /item/{n} 200\n" for n in range(12_500))
            with gzip.open(os.path.join(d, "sales.csv.gz"), "at", newline="") as f:
                rows = csv.writer(f)
                if day == 0:
                    rows.writerow(["id", "note", "amount"])
                rows.writerows([n, f"quoted\nnewline {n}", n % 97] for n in range(5_000 * day, 5_000 * (day + 1)))
        pq.write_table(pa.table({"x": list(range(100_000)), "y": [0.5] * 100_000}),
                       os.path.join(d, "table.parquet"), row_group_size=10_000)

        # The format is detected (gzip magic); chunk_size counts decompressed bytes. Parts
        # start at gzip members (or at indexed seek points inside a long single member).
        print(sum(ex.map(words, objects(d + "/log.txt.gz", chunk_size="200KiB"))))
        # A quoted field that spans lines is never split between parts.
        print(ex.map_reduce(amount, objects(d + "/sales.csv.gz", format="csv", chunk_size="100KiB"), sum))
        print(sum(ex.map(column_sum, objects(d + "/table.parquet", format="parquet",
                                             columns=["x"], chunks=4))))
