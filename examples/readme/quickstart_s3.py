# Needs an AWS account: a bucket you can write to and credentials that boto3 finds
# (pip install 'cloudpool[aws]'). Without one, run it inside cloudpool.testing.local_cloud()
# (see "Testing your code without a cloud").
from cloudpool import CloudPoolExecutor, objects


def count_lines(part):
    return sum(1 for _line in part)


if __name__ == "__main__":
    with CloudPoolExecutor(backend="local", storage="s3://my-bucket/tmp") as ex:
        print(sum(ex.map(count_lines, objects("s3://my-bucket/logs/", chunk_size="64MiB"))))
