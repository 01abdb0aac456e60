"""Where the runtime files are -- ``runtime/<backend>/`` entry points and Dockerfiles.

The backends that build or deploy a runtime (``aws_lambda``, ``kubernetes``) copy an
entry point and a Dockerfile from ``runtime/<backend>/`` into a zip or an image build
context. In a source checkout those files sit beside the package. A wheel carries the
same files as package data, ``cloudpool/_runtime/<backend>/`` (``setup.py`` maps
``runtime/`` there), so ``cloudpool runtime build`` and ``deploy`` work after a plain
``pip install cloudpool`` too. This module owns finding them, in that order, and the
project files an image build needs to ``pip install`` cloudpool (``project_files``).
"""
from __future__ import annotations

import os
import re
import shutil
from importlib import metadata
from typing import Dict, List, Tuple

#: The cloudpool package this code runs from.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The package data directory that holds runtime/ in a wheel (not needed on a worker).
RUNTIME_DATA_DIR = "_runtime"
#: Where a wheel puts runtime/ (package data of cloudpool._runtime).
INSTALLED_RUNTIME = os.path.join(PACKAGE_DIR, RUNTIME_DATA_DIR)
#: Where a source checkout has it: beside the package.
CHECKOUT_ROOT = os.path.dirname(PACKAGE_DIR)
CHECKOUT_RUNTIME = os.path.join(CHECKOUT_ROOT, "runtime")
#: What an image build context needs to `pip install .` cloudpool.
PROJECT_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md")


def runtime_file(backend: str, name: str) -> str:
    """The path of ``runtime/<backend>/<name>``, from the installed package or the checkout."""
    candidates = [os.path.join(INSTALLED_RUNTIME, backend, name),
                  os.path.join(CHECKOUT_RUNTIME, backend, name)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"cloudpool's runtime file runtime/{backend}/{name} is missing (looked in {candidates[0]} "
        f"and {candidates[1]}): this cloudpool installation is incomplete; reinstall it "
        f"(pip install --force-reinstall cloudpool) or use a source checkout (pip install -e .)")


def copy_package(dest: str) -> None:
    """Copy the cloudpool package to ``dest`` as a worker needs it: no bytecode, no runtime/ data."""
    shutil.copytree(PACKAGE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", RUNTIME_DATA_DIR))


def project_files(dest: str) -> str:
    """Write setup.py, setup.cfg, pyproject.toml and README.md for ``pip install .`` into ``dest``.

    Copied from the checkout when there is one; otherwise generated from the installed
    distribution's metadata (its version, requirements and extras), which installs the
    same cloudpool from the package copied beside them. Returns where they came from.
    """
    os.makedirs(dest, exist_ok=True)
    if all(os.path.isfile(os.path.join(CHECKOUT_ROOT, f)) for f in PROJECT_FILES):
        for fname in PROJECT_FILES:
            shutil.copy2(os.path.join(CHECKOUT_ROOT, fname), os.path.join(dest, fname))
        return CHECKOUT_ROOT
    try:
        dist = metadata.distribution("cloudpool")
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"cloudpool is neither a source checkout (no {', '.join(PROJECT_FILES)} under "
            f"{CHECKOUT_ROOT}) nor an installed distribution: install it with pip") from None
    required, extras = split_requirements(dist.requires or [])
    lines = ["[metadata]", "name = cloudpool", f"version = {dist.version}", "",
             "[options]", "packages = find:", f"python_requires = {dist.metadata['Requires-Python'] or '>=3'}",
             "install_requires ="]
    lines += [f"    {r}" for r in required]
    lines += ["", "[options.packages.find]", "include = cloudpool, cloudpool.*", "",
              "[options.extras_require]"]
    for extra, reqs in sorted(extras.items()):
        lines.append(f"{extra} =")
        lines += [f"    {r}" for r in reqs]
    with open(os.path.join(dest, "setup.cfg"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(dest, "setup.py"), "w", encoding="utf-8") as f:
        f.write("from setuptools import setup\n\nsetup()\n")
    with open(os.path.join(dest, "pyproject.toml"), "w", encoding="utf-8") as f:
        f.write('[build-system]\nrequires = ["setuptools>=61", "wheel"]\n'
                'build-backend = "setuptools.build_meta"\n')
    with open(os.path.join(dest, "README.md"), "w", encoding="utf-8") as f:
        f.write(f"cloudpool {dist.version}, as installed where this runtime was built.\n")
    return f"the installed distribution cloudpool {dist.version}"


_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([A-Za-z0-9_.-]+)["']""")


def split_requirements(requires: List[str]) -> Tuple[List[str], Dict[str, List[str]]]:
    """Requires-Dist lines -> (plain requirements, extra -> requirements).

    ``boto3>=1.26; extra == "aws"`` goes to ``aws``; any other marker stays on the
    requirement, as setup.cfg accepts it.
    """
    required: List[str] = []
    extras: Dict[str, List[str]] = {}
    for line in requires:
        spec, _, marker = line.partition(";")
        spec, marker = spec.strip(), marker.strip()
        match = _EXTRA_MARKER.search(marker)
        if match is None:
            required.append(f"{spec}; {marker}" if marker else spec)
            continue
        rest = _EXTRA_MARKER.sub("", marker).strip()
        rest = re.sub(r"^(and\s+)|(\s+and)$", "", rest).strip()
        extras.setdefault(match.group(1), []).append(f"{spec}; {rest}" if rest else spec)
    return required, extras
