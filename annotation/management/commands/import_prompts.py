"""manage.py import_prompts PROJECT FILE: prompts (with outputs and tasks) from JSONL or CSV, all or nothing."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from tqdm import tqdm

from annotation import importing
from annotation.errors import no_space
from annotation.models import Project
from annotation.services import prompts


class Command(BaseCommand):
    help = (
        "Import prompts, their outputs and tasks over them from a JSONL or CSV file. Every line is "
        "checked first; one bad line rejects the file (the error names it) and nothing is written."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="Project id or name.")
        parser.add_argument("file", help="Path of the file, or - for standard input.")
        parser.add_argument("--format", dest="fmt", choices=importing.FORMATS, help="Default: guessed.")
        parser.add_argument(
            "--map",
            dest="mapping",
            action="append",
            default=[],
            metavar="OURS=THEIRS",
            help="Read our field from the file's field or column THEIRS, e.g. --map text=post (repeatable).",
        )
        parser.add_argument(
            "--tasks",
            choices=importing.TASK_MODES,
            help="Tasks to make over the outputs. Default: single if there are outputs, else none.",
        )

    def handle(self, *args, project, file, fmt, mapping, tasks, **options):
        try:
            project = importing.project_by_reference(project)
        except Project.DoesNotExist as error:
            raise CommandError(f"no project with id or name {project!r}") from error
        pairs = {}
        for item in mapping:
            ours, sep, theirs = item.partition("=")
            if not sep or not ours.strip() or not theirs.strip():
                raise CommandError(f"--map {item!r}: write it as OURS=THEIRS, e.g. --map text=post")
            pairs[ours.strip()] = theirs.strip()

        source = sys.stdin.buffer if file == "-" else file
        label = "standard input" if file == "-" else file
        # Progress goes to stderr and only shows on a terminal (disable=None).
        try:
            with tqdm(desc="checking", unit=" lines", file=sys.stderr, disable=None) as bar:
                rows = []
                for row in importing.iter_prompt_file(source, fmt=fmt, mapping=pairs):
                    rows.append(row)
                    bar.update()
            with tqdm(desc="writing", total=len(rows), unit=" prompts", file=sys.stderr, disable=None) as bar:
                result = prompts.prompts_import(
                    project=project, rows=rows, make_tasks=tasks, progress=bar.update
                )
        except FileNotFoundError as error:
            raise CommandError(f"{file}: no such file") from error
        except importing.ImportFileError as error:
            raise CommandError(f"{label}: {error}. Nothing was imported.") from error
        except DatabaseError as error:
            if not no_space(error):
                raise
            raise CommandError(
                f"the database server has no space left on its disk: nothing was imported. {error}"
            ) from error
        self.stdout.write(
            f"Imported {result.prompts} prompts, {result.outputs} outputs and {result.tasks} tasks "
            f"into project {project.name!r}."
        )
