from django.db import migrations

GROUP = "Release managers"


def create_group(apps, schema_editor):
    # Permissions are normally created after migrate runs; ours is needed now.
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    run_type, _ = ContentType.objects.get_or_create(app_label="dashboard", model="run")
    permission, _ = Permission.objects.get_or_create(
        codename="act_on_run", content_type=run_type,
        defaults={"name": "Can cancel, approve, reject and retry runs"},
    )
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(permission)


def remove_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_group, remove_group)]
