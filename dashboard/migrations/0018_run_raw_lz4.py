"""A run's raw payload compressed with lz4 rather than pglz where PostgreSQL has it:
every run written compresses its payload (a few kilobytes), and pglz took about a
tenth of the database's time to write a page. Values already stored stay as they are."""

from django.db import migrations


def compression(method):
    def alter(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
                           " AND %s = ANY(enumvals)", [method])
            if cursor.fetchone():  # PostgreSQL 14 or later, built with it
                cursor.execute("ALTER TABLE dashboard_run ALTER COLUMN raw"
                               f" SET COMPRESSION {method}")
    return alter


class Migration(migrations.Migration):

    dependencies = [
        ("dashboard", "0017_derive_backlog"),
    ]

    operations = [
        migrations.RunPython(compression("lz4"), compression("pglz")),
    ]
