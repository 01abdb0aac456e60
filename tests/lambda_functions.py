"""Functions the aws_lambda tests run inside Lambda containers.

Kept apart from the test module on purpose: the worker imports the module a function
comes from (the client ships its source), and a container has the runtime's packages
only -- no pytest, no moto. So this module imports nothing but the standard library.
"""
from __future__ import annotations

import os
import time


def square(x):
    return x * x


def add(x, y):
    return x + y


def raise_key_error(key):
    raise KeyError(key)


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def where():
    return {"task_root": os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd(),
            "function": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"), "pid": os.getpid()}
