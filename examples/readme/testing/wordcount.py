# wordcount.py
"""Your code, written for AWS Lambda and S3; nothing in it knows about tests."""
import collections

from cloudpool import CloudPoolExecutor, Storage, objects


def count_words(part):
    return collections.Counter(word for line in part for word in line.decode().split())


def word_count(corpus="s3://corpus-bucket/texts/"):
    total = collections.Counter()
    with CloudPoolExecutor(backend="aws_lambda", storage="s3://corpus-bucket/jobs/") as ex:
        for counts in ex.map(count_words, objects(corpus)):
            total.update(counts)
    Storage("s3://corpus-bucket/out/").put("total.txt", str(sum(total.values())))
    return total
