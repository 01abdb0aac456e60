#!/usr/bin/env python3
"""The cloudpool runtime for Google Cloud Run / Cloud Functions 2nd gen: the knative runtime
server with Google ID-token authentication instead of a shared token.

Cloud Run services are Knative services, so ``runtime/knative/server.py`` serves them
unchanged; this module only owns the authentication check. A caller sends
``Authorization: Bearer <Google ID token>``; the token's signature is checked against
Google's public certificates, its audience must be this service's (``--audience``, the
service URL by default on Cloud Run) and its issuer Google's. With Cloud Run's own IAM
check on (``--no-allow-unauthenticated``) the platform verifies the token too; this
check makes the runtime safe on its own (e.g. behind ``--allow-unauthenticated``), and
``--invoker-email`` limits callers to listed service accounts.

Run it (settings are arguments or ``CLOUDRUN_*`` variables, never ``CLOUDPOOL_*``,
which workers would read as cloudpool settings)::

    python runtime/cloudrun/server.py --audience https://svc-xyz.a.run.app [knative server options]
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from typing import Any, FrozenSet, Optional, Sequence

import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.id_token

LOGGER = logging.getLogger("cloudpool.runtime.cloudrun")
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})


def _load_knative_server():
    name = "cloudpool_knative_runtime_server"
    if name in sys.modules:
        return sys.modules[name]
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(here, "knative_server.py"), os.path.join(here, "..", "knative", "server.py")):
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
            return module
    raise ImportError("the knative runtime server (knative_server.py) is missing beside server.py")


knative_server = _load_knative_server()


class IdTokenRuntime(knative_server.Runtime):
    """The knative ``Runtime`` whose requests carry Google ID tokens instead of a shared token."""

    audience: Sequence[str] = ()
    certs_url: str = GOOGLE_CERTS_URL
    issuers: FrozenSet[str] = GOOGLE_ISSUERS
    invokers: FrozenSet[str] = frozenset()

    def __init__(self, **kwargs: Any) -> None:
        kwargs["token"] = None
        super().__init__(**kwargs)
        self._request = google.auth.transport.requests.Request()  # caches nothing; certs are fetched per check

    def authorized(self, header: Optional[str]) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return False
        try:
            claims = google.oauth2.id_token.verify_token(value.strip(), self._request, audience=list(self.audience),
                                                         certs_url=self.certs_url, clock_skew_in_seconds=10)
        except (ValueError, google.auth.exceptions.GoogleAuthError) as exc:
            LOGGER.info("refused an ID token: %s", exc)
            return False
        if claims.get("iss") not in self.issuers:
            LOGGER.info("refused an ID token from issuer %r", claims.get("iss"))
            return False
        if self.invokers and claims.get("email") not in self.invokers:
            LOGGER.info("refused an ID token of %r (not in --invoker-email)", claims.get("email"))
            return False
        return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--audience", action="append", default=None,
                        help="an audience tokens may be minted for (repeatable): the service URL and/or "
                             "its custom audience (default: $CLOUDRUN_AUDIENCE, comma-separated)")
    parser.add_argument("--certs-url", default=os.environ.get("CLOUDRUN_CERTS_URL", GOOGLE_CERTS_URL),
                        help="where the token signers' public certificates are (Google's by default)")
    parser.add_argument("--issuer", action="append", default=None)
    parser.add_argument("--invoker-email", action="append", default=[])
    args, rest = parser.parse_known_args(argv)
    audiences = args.audience or [a for a in os.environ.get("CLOUDRUN_AUDIENCE", "").split(",") if a]
    if not audiences:
        print("server.py: give --audience (the service URL callers mint their ID tokens for) or set "
              "CLOUDRUN_AUDIENCE", file=sys.stderr)
        return 2
    IdTokenRuntime.audience = tuple(audiences)
    IdTokenRuntime.certs_url = args.certs_url
    if args.issuer:
        IdTokenRuntime.issuers = frozenset(args.issuer)
    IdTokenRuntime.invokers = frozenset(args.invoker_email)
    # The knative server builds its Runtime from this module attribute: serve with ours.
    knative_server.Runtime = IdTokenRuntime
    return knative_server.main(list(rest) + ["--insecure-no-token"])


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())
