"""`python -m feedback_loop.engine generate|refine|select|train|evaluate|tiny` (see cli.py)."""

from feedback_loop.engine.cli import main

if __name__ == "__main__":
    main()
