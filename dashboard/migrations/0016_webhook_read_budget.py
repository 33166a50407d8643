from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dashboard', '0015_cockpit_speed'),
    ]

    operations = [
        migrations.AddField(
            model_name='connection',
            name='webhook_budget_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='connection',
            name='webhook_lease_until',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
