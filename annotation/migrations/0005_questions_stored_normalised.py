"""Projects store their questions config with its defaults filled in (Project.save), so that
reads trust it; this fills them in on the projects saved before."""

from django.db import migrations


def fill_in_defaults(apps, schema_editor):
    from annotation.questions import normalised_questions

    Project = apps.get_model("annotation", "Project")
    for project in Project.objects.only("pk", "questions").iterator():
        questions = normalised_questions(project.questions)
        if questions != project.questions:
            Project.objects.filter(pk=project.pk).update(questions=questions)


class Migration(migrations.Migration):
    dependencies = [("annotation", "0004_webhooks")]

    operations = [migrations.RunPython(fill_in_defaults, migrations.RunPython.noop)]
