from cloudpool.multiprocessing import Pool          # was: from multiprocessing import Pool


def square(x):
    return x * x


if __name__ == "__main__":
    with Pool(4) as p:
        print(p.map(square, range(100), chunksize=10))
