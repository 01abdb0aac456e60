"""The sample application's own tests: cloud code, run in cloudpool.testing's local cloud.

No AWS account, credentials or network: every S3 bucket is a temporary local directory
and the aws_lambda backend runs on local worker processes.
"""
from __future__ import annotations

import json
import os
import unittest

import cloudpool.testing
import wordcount_app
from cloudpool.testing import LocalCloudMixin, local_cloud

HAMLET = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
SONNET = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"


class WordCountTest(LocalCloudMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.cloud.put("s3://corpus-bucket/texts/hamlet.txt", HAMLET * 200)
        self.cloud.put("s3://corpus-bucket/texts/sonnet.txt", SONNET * 300)

    def test_counts_every_word_of_every_text(self):
        totals = wordcount_app.word_count(chunk_size="4KiB")  # several parts per text
        self.assertEqual(totals["to"], 200 * 3 + 300 * 1)
        self.assertEqual(totals["be"], 200 * 2)
        self.assertEqual(totals["thee"], 300)
        self.assertEqual(sum(totals.values()), 200 * 18 + 300 * 15)

    def test_writes_the_summary_to_s3(self):
        wordcount_app.word_count()
        summary = json.loads(self.cloud.get("s3://corpus-bucket/summaries/wordcount.json"))
        self.assertEqual(summary["words"], 200 * 18 + 300 * 15)
        self.assertEqual(summary["top"][0], ["to", 900])
        # The executor cleaned its job data from the (fake) bucket when it shut down.
        self.assertEqual(self.cloud.list("s3://corpus-bucket/cloudpool-jobs/"), [])

    def test_pool_version_writes_from_the_workers(self):
        totals = wordcount_app.word_count_pool()
        self.assertEqual(totals, wordcount_app.word_count())
        parts = self.cloud.list("s3://corpus-bucket/summaries/parts/")
        self.assertGreater(len(parts), 2)
        self.assertTrue(all(url.startswith("s3://corpus-bucket/summaries/parts/") for url in parts))

    def test_missing_corpus_is_an_error(self):
        with self.assertRaises(FileNotFoundError):
            wordcount_app.word_count("s3://corpus-bucket/nothing-here/")


class DecoratorAndBlockTest(unittest.TestCase):
    @local_cloud
    def test_decorated(self):
        cloudpool.testing.put("s3://corpus-bucket/texts/one.txt", "one two two\n")
        self.assertEqual(wordcount_app.word_count(), {"one": 1, "two": 2})

    def test_block_with_only_the_corpus_bucket(self):
        with local_cloud(buckets=["s3://corpus-bucket"]) as cloud:
            cloud.put("s3://corpus-bucket/texts/one.txt", "three\n")
            self.assertEqual(wordcount_app.word_count(), {"three": 1})
            with self.assertRaises(FileNotFoundError):
                cloud.put("s3://another-bucket/x.txt", "not in this cloud")

    def test_empty_text_counts_nothing(self):
        with local_cloud() as cloud:
            cloud.put("s3://corpus-bucket/texts/empty.txt", b"")
            self.assertEqual(wordcount_app.word_count(), {})
            summary = json.loads(cloud.get("s3://corpus-bucket/summaries/wordcount.json"))
            self.assertEqual((summary["words"], summary["top"]), (0, []))


def tearDownModule():
    # tests/test_testing_mode.py runs this module with SAMPLE_STRICT=1, no AWS_* variables
    # and every outgoing connection refused: nothing may have set AWS variables. (A cloud
    # SDK may be imported -- the local cloud checks option names against the real backend
    # classes when they import -- but with the network refused it reaches nothing.)
    if os.environ.get("SAMPLE_STRICT"):
        leaked = [k for k in os.environ if k.startswith("AWS_")]
        if leaked:
            raise AssertionError(f"the local cloud used AWS variables {leaked}")


if __name__ == "__main__":
    unittest.main()
