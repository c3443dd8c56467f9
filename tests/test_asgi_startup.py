"""What a serving process sets up when it loads the ASGI application."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_objects_loaded_at_start_are_kept_out_of_full_collections(tmp_path: Path) -> None:
    # A full collection walks every tracked object with the event loop stopped; what the
    # process loaded at start is frozen, so those pauses stay short under load.
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "DATA_DIR": str(tmp_path),
    }
    # The views (loaded through the URLconf on the first console request) and the apps'
    # tasks are imported before the freeze, and frozen: not among the collector's objects.
    probe = (
        "import gc, sys; before = gc.get_freeze_count(); import mcpgw.asgi; "
        "loaded = [sys.modules[m].__dict__ for m in ('console.views', 'approvals.tasks')]; "
        "tracked = {id(o) for o in gc.get_objects()}; "
        "print(sum(id(d) in tracked for d in loaded), before, gc.get_freeze_count())"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    unfrozen, before, after = map(int, done.stdout.split()[-3:])
    assert after - before > 100_000
    assert unfrozen == 0
