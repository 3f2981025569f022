"""Test helpers the code sandbox makes importable for a task's tests.

The sandboxed interpreter starts without site-packages, so MBPP-style tests that write
`from pytest import approx` could not load. This folder holds small standard-library-only
stand-ins for such helpers (`pytest.approx`, `pytest.raises`). The sandbox sends each module's
source (every `*.py` here but this file) to the child, which loads it by name: nothing outside the
standard library, not even this folder, is opened to the program under test.
"""
