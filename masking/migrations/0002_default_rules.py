from django.db import migrations

from masking.defaults import BUILTINS, install_defaults

def create(apps, schema_editor):
    install_defaults(apps.get_model("masking", "MaskingRule"))


def remove(apps, schema_editor):
    names = ["Sensitive keys", *(b[0] for b in BUILTINS)]
    apps.get_model("masking", "MaskingRule").objects.filter(name__in=names).delete()


class Migration(migrations.Migration):
    dependencies = [("masking", "0001_initial")]
    operations = [migrations.RunPython(create, remove)]
