"""Stand-in for A1111's launch.py (is_installed/run_pip from modules/launch_utils.py:121,139 in v1.10.1):
records what install.py asks for instead of running pip."""

import importlib.metadata

pip_calls = []
installed = None  # None: ask importlib.metadata; a set: pretend exactly these are installed


def is_installed(package):
    if installed is not None:
        return package in installed
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def run_pip(command, desc=None, live=False):
    pip_calls.append(command)
