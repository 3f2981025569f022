"""Verdicts survive many sandboxes at once: a child that writes its results and exits between two
looks of the collector still has every result read."""

import os
import time

from feedback_loop.engine import sandbox
from feedback_loop.engine.sandbox import SandboxLimits, run_unit_tests_many

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "def test_add():\n    assert add(1, 2) == 3\n"


class _ExitsWhileUnwatched:
    """A child that writes its results and exits exactly when the collector is not looking:
    between an empty wait on the pipes and the check of its exit status."""

    def __init__(self, results_write_fd: int, output_read_fd: int, output_write_fd: int):
        self._results = results_write_fd
        self._output_write = output_write_fd
        self.stdout = os.fdopen(output_read_fd, "rb", buffering=0)
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            os.write(self._results, b"the results\n")
            os.close(self._results)
            os.close(self._output_write)
            self.returncode = 0
        return self.returncode


def test_results_written_just_before_exit_are_read():
    results_read, results_write = os.pipe()
    output_read, output_write = os.pipe()
    child = _ExitsWhileUnwatched(results_write, output_read, output_write)
    try:
        _output, lines, timed_out = sandbox._collect(
            child, results_read, time.monotonic() + 10, SandboxLimits()
        )
    finally:
        os.close(results_read)
        child.stdout.close()

    assert (lines, timed_out) == (["the results"], False)


def test_a_hundred_correct_programs_on_fifty_workers_all_pass():
    # Generous limits: on a small machine fifty interpreters start at once and share the cores.
    limits = SandboxLimits(timeout_s=120.0, cpu_s=60)
    results = run_unit_tests_many([ADD] * 100, TESTS, limits=limits, max_workers=50)

    assert [r.output for r in results if r.status != "pass"] == []
