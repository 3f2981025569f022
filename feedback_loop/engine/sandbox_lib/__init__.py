"""Test helpers the code sandbox puts on the program's import path, read-only.

The sandboxed interpreter starts without site-packages, so MBPP-style tests that write
`from pytest import approx` could not load. This folder holds small standard-library-only
stand-ins for such helpers (`pytest.approx`, `pytest.raises`) and nothing else: the folder, not the
interpreter's site-packages, is what the sandbox opens to the program under test.
"""
