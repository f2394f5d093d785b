"""Shared test helpers."""

from pathlib import Path


def _write_marker(path):  # what a malicious checkpoint would call while being unpickled
    Path(path).write_text("code ran")


class Exploit:
    """Unpickling this calls _write_marker(path): a stand-in for a checkpoint that runs code.
    Tests assert the marker file never appears."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (_write_marker, (self.path,))
