# test_wordcount.py
import unittest

import cloudpool.testing
from cloudpool.testing import LocalCloudMixin, local_cloud

import wordcount


class WordCountTest(LocalCloudMixin, unittest.TestCase):   # a fresh local cloud per test
    def setUp(self):
        super().setUp()                                     # self.cloud is now active
        self.cloud.put("s3://corpus-bucket/texts/a.txt", "to be or not to be\n")
        self.cloud.put("s3://corpus-bucket/texts/b.txt", "to sleep\n")

    def test_counts_words(self):
        self.assertEqual(wordcount.word_count()["to"], 3)

    def test_writes_total_to_s3(self):
        wordcount.word_count()
        self.assertEqual(self.cloud.get("s3://corpus-bucket/out/total.txt"), b"8")
        self.assertIn("s3://corpus-bucket/out/total.txt", self.cloud.list("s3://corpus-bucket/"))


class OtherStylesTest(unittest.TestCase):
    @local_cloud                                            # decorator: a cloud per call
    def test_decorated(self):
        cloudpool.testing.put("s3://corpus-bucket/texts/c.txt", "hello hello\n")
        self.assertEqual(wordcount.word_count(), {"hello": 2})

    def test_block_where_only_one_bucket_exists(self):
        with local_cloud(buckets=["s3://corpus-bucket"]) as cloud:
            cloud.put("s3://corpus-bucket/texts/d.txt", "one\n")
            self.assertEqual(wordcount.word_count(), {"one": 1})
            with self.assertRaises(FileNotFoundError):      # as in the cloud: no such bucket
                wordcount.word_count("s3://other-bucket/texts/")


if __name__ == "__main__":
    unittest.main()
