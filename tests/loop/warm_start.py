"""A process that imports the model libraries once and forks Celery workers from that state.

A worker imports torch, transformers and peft at its first model step: seconds of CPU each time. A
test that kills a worker in the middle of each step of a round starts one worker after another,
and each would pay that again. This process pays it once, then, for each line it reads on stdin
(JSON: {"argv": [...], "log": "...", "cwd": "..."}), forks a child that starts a session of its own
(its process group is killed as a whole, as when its machine dies), writes its output to the log,
and runs the Celery command line `argv` in the forked interpreter; it answers each line with the
child's process id. Nothing else is imported before the fork: no Django, no Celery, no connection,
no thread (forking a process with threads is unsafe).

Run as a script by tests/loop/processes.py (WarmStarter), with the workers' environment.
"""

import json
import os
import signal
import sys


def _reap(_signum, _frame) -> None:
    """Reap every child that ended, so that a dead worker's process id stops answering at once."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _run_worker(argv: list[str], log: str, cwd: str) -> None:
    """In the forked child: become the worker. Never returns."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        os.chdir(cwd)
        sys.path[0] = cwd  # as `python -m celery` run in `cwd` has it
        sys.argv = argv
        from celery.__main__ import main

        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from peft import LoraConfig, PeftModel, get_peft_model  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from transformers.models.gpt2 import modeling_gpt2  # noqa: F401

    signal.signal(signal.SIGCHLD, _reap)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_worker(request["argv"], request["log"], request["cwd"])
        print(pid, flush=True)


if __name__ == "__main__":
    main()
