"""Entry point of the local test image that moto runs a zip-packaged Lambda function in.

moto (with a container engine) starts one container per invocation from the image named
by ``MOTO_DOCKER_LAMBDA_IMAGE``, with the function's zip extracted at ``/var/task`` and
the command ``[<handler>, <event as JSON>]``; it reads the function's answer from the
LAST line of the container's output and treats a non-zero exit code as a function error.
This script plays the part the AWS Lambda Python runtime plays in a real Lambda: import
``module.function`` from ``/var/task``, call it with the event and a context object, and
print the JSON answer (or a Lambda-style error object) as the last line.

It is only baked into the debootstrap-built image made by
``scripts/install-lambda-deps.sh``; real Lambda images bring their own runtime interface.
"""
import importlib
import json
import os
import sys
import time
import traceback
import uuid


class _Context:
    """The attributes of the Lambda context object that handlers commonly read."""

    def __init__(self) -> None:
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.aws_request_id = str(uuid.uuid4())
        self.invoked_function_arn = ""
        timeout = float(os.environ.get("AWS_LAMBDA_FUNCTION_TIMEOUT") or 3)
        self._deadline = time.time() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def main(argv) -> int:
    if len(argv) != 3:
        print(json.dumps({"errorType": "Runtime.InvalidArguments",
                          "errorMessage": "usage: bootstrap HANDLER EVENT_JSON"}))
        return 2
    handler, raw_event = argv[1], argv[2]
    os.chdir("/var/task")
    sys.path.insert(0, "/var/task")
    try:
        module_name, func_name = handler.rsplit(".", 1)
        func = getattr(importlib.import_module(module_name), func_name)
        result = func(json.loads(raw_event), _Context())
        answer = json.dumps(result)
    except Exception as exc:  # noqa: BLE001 - reported as Lambda reports a function error
        traceback.print_exc()
        sys.stderr.flush()
        print(json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}))
        return 1
    sys.stderr.flush()
    print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
