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
    probe = (
        "import gc; before = gc.get_freeze_count(); import mcpgw.asgi; "
        "print(before, gc.get_freeze_count())"
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
    before, after = map(int, done.stdout.split()[-2:])
    assert after - before > 100_000
