from django.core.management.base import BaseCommand

from audit.tasks import write_checkpoint_if_grown


class Command(BaseCommand):
    help = "Sign a checkpoint of the audit chain's head now, if it grew since the last one."

    def handle(self, *args: object, **options: object) -> None:
        checkpoint = write_checkpoint_if_grown()
        if checkpoint is None:
            self.stdout.write("no new records since the last checkpoint")
        else:
            self.stdout.write(f"signed checkpoint at sequence {checkpoint.seq}")
