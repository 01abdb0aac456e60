"""A small "user" application written for AWS Lambda and S3 (the sample for cloudpool.testing).

It counts the words of every text under ``s3://corpus-bucket/texts/`` on Lambda workers
and writes a JSON summary back to S3. Nothing in it knows about tests: its own test
module (``test_sample_wordcount.py``) runs it unchanged inside ``cloudpool.testing``'s
local cloud.
"""
from __future__ import annotations

import collections
import json
import re
from typing import Dict, Iterable

from cloudpool import CloudPoolExecutor, Storage, objects
from cloudpool.multiprocessing import Pool

CORPUS = "s3://corpus-bucket/texts/"
SUMMARY_URL = "s3://corpus-bucket/summaries/"
JOBS = "s3://corpus-bucket/cloudpool-jobs/"

_WORD = re.compile(r"[a-z']+")


def count_words(part) -> Dict[str, int]:
    """Word counts of one byte range of one text (runs on a Lambda worker)."""
    counts: collections.Counter = collections.Counter()
    for line in part:
        counts.update(_WORD.findall(line.decode("utf-8").lower()))
    return dict(counts)


def merge(partials: Iterable[Dict[str, int]]) -> Dict[str, int]:
    total: collections.Counter = collections.Counter()
    for counts in partials:
        total.update(counts)
    return dict(total)


def word_count(corpus: str = CORPUS, *, chunk_size: str = "1MiB") -> Dict[str, int]:
    """Count the words of every object under ``corpus`` on AWS Lambda; write the summary to S3."""
    with CloudPoolExecutor(backend="aws_lambda", storage=JOBS, runtime="wordcount") as executor:
        totals = merge(executor.map(count_words, objects(corpus, chunk_size=chunk_size)))
    summary = {"words": sum(totals.values()), "distinct": len(totals),
               "top": sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:10]}
    Storage(SUMMARY_URL).put("wordcount.json", json.dumps(summary))
    return totals


def count_and_store(part) -> str:
    """Counts one part and writes them to S3 from the worker; returns the object written."""
    out = Storage(SUMMARY_URL + "parts/")
    key = f"{part.key.rsplit('/', 1)[-1]}.{part.part}.json"
    out.put(key, json.dumps(count_words(part)))
    return out.url(key)


def word_count_pool(corpus: str = CORPUS) -> Dict[str, int]:
    """The same count with the multiprocessing.Pool API, written for AWS Lambda."""
    with Pool(8, backend="aws_lambda", storage=JOBS) as pool:
        written = pool.map(count_and_store, objects(corpus, chunk_size="8KiB"))
    store = Storage(SUMMARY_URL + "parts/")
    return merge(json.loads(store.get(url.rsplit("/", 1)[-1])) for url in written)
