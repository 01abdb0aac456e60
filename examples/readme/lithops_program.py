import cloudpool.compat.lithops as lithops        # was: import lithops


def double(x):
    return 2 * x


if __name__ == "__main__":
    fexec = lithops.FunctionExecutor()
    fexec.map(double, [1, 2, 3])
    print(fexec.get_result())                       # [2, 4, 6]
