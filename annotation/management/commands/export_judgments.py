"""manage.py export_judgments PROJECT: judgments, SFT or preference data as JSONL, CSV or parquet, streamed."""

from __future__ import annotations

import os
import sys

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotation import exporting, importing
from annotation.errors import no_space
from annotation.models import Project


class Command(BaseCommand):
    help = (
        "Export a project's judgments (kind judgments), or training data that TRL reads directly: "
        "sft ({prompt, completion} from fixes) or preference ({prompt, chosen, rejected}). "
        "Rows are streamed from the database; memory stays constant."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="Project id or name.")
        parser.add_argument("--format", dest="fmt", choices=exporting.FORMATS, default="jsonl")
        parser.add_argument("--kind", choices=exporting.KINDS, default="judgments")
        parser.add_argument(
            "--output",
            "-o",
            help="File to write. Default: standard output (JSONL or CSV; parquet needs a file).",
        )
        parser.add_argument(
            "--status",
            action="append",
            default=[],
            help="Only judgments with this status (repeatable or comma-separated). "
            "sft and preference take pending and accepted ones, never rejected or excluded.",
        )
        parser.add_argument("--round", dest="round_number", type=int, help="Only judgments of this round.")

    def handle(self, *args, project, fmt, kind, output, status, round_number, **options):
        try:
            project = importing.project_by_reference(project)
        except Project.DoesNotExist as error:
            raise CommandError(f"no project with id or name {project!r}") from error
        if fmt == "parquet" and not output:
            raise CommandError("--format parquet needs --output FILE")
        statuses = [name.strip() for item in status for name in item.split(",") if name.strip()] or None
        try:
            rows = exporting.export_rows(project, kind=kind, statuses=statuses, round_number=round_number)
        except exporting.ExportError as error:
            raise CommandError(str(error)) from error
        rows = tqdm(rows, desc=f"exporting {kind}", unit=" rows", file=sys.stderr, disable=None)

        try:
            count = self._write(rows, fmt=fmt, kind=kind, output=output)
        except OSError as error:
            if not no_space(error):
                raise
            if output:
                told = f"no space left on device writing {output}: nothing was written (the partial file was removed)"
            else:
                told = "no space left on device writing standard output: what it holds is incomplete"
            raise CommandError(f"{told}. {error}") from error
        where = output or "standard output"
        self.stderr.write(f"Wrote {count} {kind} rows of project {project.name!r} to {where}.")

    def _write(self, rows, *, fmt: str, kind: str, output: str | None) -> int:
        if not output:
            if fmt == "csv":
                return exporting.write_csv(rows, self.stdout, kind=kind)
            return exporting.write_jsonl(rows, self.stdout)
        # Written beside the target and moved into place, so a failed export leaves no half file.
        partial = f"{output}.partial"
        try:
            if fmt == "parquet":
                count = exporting.write_parquet(rows, partial, kind=kind)
            elif fmt == "csv":
                with open(partial, "w", encoding="utf-8", newline="") as stream:
                    count = exporting.write_csv(rows, stream, kind=kind)
            else:
                with open(partial, "w", encoding="utf-8") as stream:
                    count = exporting.write_jsonl(rows, stream)
            os.replace(partial, output)
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise
        return count
