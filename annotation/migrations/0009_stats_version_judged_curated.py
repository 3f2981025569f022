from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0008_stats_version"),
    ]

    operations = [
        migrations.RenameField(model_name="statsversion", old_name="version", new_name="curated"),
        migrations.AddField(
            model_name="statsversion",
            name="judged",
            field=models.PositiveBigIntegerField(default=0),
        ),
    ]
