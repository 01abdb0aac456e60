from cloudpool import CloudPoolExecutor, objects


def size(part):
    return len(part.read())


if __name__ == "__main__":
    # Per call: these options override the configuration's s3 section for this input only.
    parts = objects("s3://bucket/texts/", chunk_size="64MiB",
                    storage_options={"endpoint_url": "http://127.0.0.1:9000", "max_attempts": 3})
    with CloudPoolExecutor(config={"s3": {"region": "eu-west-1"}}) as ex:
        print(sum(ex.map(size, parts)))
