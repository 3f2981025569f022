"""Projects: creating one (from fields or from a template) and changing its settings."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from annotation import templates_qa2
from annotation.errors import ProjectTemplateError
from annotation.models import Project

# name → (label, a function returning the project fields the template sets: questions, guidelines)
PROJECT_TEMPLATES = {templates_qa2.NAME: (templates_qa2.LABEL, templates_qa2.template_fields)}


def project_create_from_template(
    *, name: str, template: str, overlap: int = 2, description: str = ""
) -> Project:
    """A new project asking the template's questions under its guidelines, validated like a form's."""
    if template not in PROJECT_TEMPLATES:
        raise ProjectTemplateError(
            f"template must be one of {', '.join(PROJECT_TEMPLATES)} (got {template!r})"
        )
    project = Project(name=name, description=description, overlap=overlap, **PROJECT_TEMPLATES[template][1]())
    try:
        project.full_clean()
    except ValidationError as error:
        raise ProjectTemplateError(
            "; ".join(f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items())
        ) from error
    project.save()
    return project


def project_create(**fields) -> Project:
    """A new project from already validated fields (the API's serializer)."""
    return Project.objects.create(**fields)


def project_update(*, project: Project, **fields) -> Project:
    """Change a project's settings; saving fills in the questions config's defaults."""
    for name, value in fields.items():
        setattr(project, name, value)
    project.save()
    return project
