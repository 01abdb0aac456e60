"""Build script. The metadata lives in setup.cfg; this file holds only what setup.cfg cannot say.

The runtime files (``runtime/<backend>/``: entry points, Dockerfiles) sit outside the
package in the repository, where the Dockerfiles expect them. A wheel carries them as
package data of ``cloudpool._runtime``, mapped from ``runtime/``, so that
``cloudpool runtime build`` / ``deploy`` work after a plain ``pip install`` too
(``cloudpool/compute/_runtime_files.py`` finds them in either place). A runtime image
installs cloudpool from a context without ``runtime/``: then there is nothing to map.
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
packages = find_packages(HERE, include=["cloudpool", "cloudpool.*"])
runtime_data = {}
if os.path.isdir(os.path.join(HERE, "runtime")):
    packages.append("cloudpool._runtime")
    runtime_data = {
        "package_dir": {"cloudpool._runtime": "runtime"},
        "package_data": {"cloudpool._runtime": ["README.md", "*/*.py", "*/Dockerfile", "*/*.txt", "*/*.md", "*/*.json"]},
    }

setup(packages=packages, **runtime_data)
