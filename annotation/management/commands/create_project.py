"""manage.py create_project --template qa2 NAME: a project asking a template's questions."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotation.errors import ProjectTemplateError
from annotation.services.projects import PROJECT_TEMPLATES, project_create_from_template


class Command(BaseCommand):
    help = (
        "Create a project from a template: its questions and rater guidelines are set; add "
        "members, prompts and outputs afterwards (admin, import_prompts or the API)."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="The new project's name (unique).")
        parser.add_argument("--template", required=True, choices=sorted(PROJECT_TEMPLATES))
        parser.add_argument("--overlap", type=int, default=2, help="Raters per task (default 2).")
        parser.add_argument("--description", default="")

    def handle(self, *args, name, template, overlap, description, **options):
        try:
            project = project_create_from_template(
                name=name, template=template, overlap=overlap, description=description
            )
        except ProjectTemplateError as error:
            raise CommandError(error.message) from error
        self.stdout.write(f"Created project {project.name!r} (id {project.pk}) from the {template} template.")
