"""gradood on an OS without ``fcntl`` (Windows): the package, the pytest plugin and the cache's
lock load and work (in a fresh interpreter where ``import fcntl`` fails)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_gradood_its_plugin_and_the_cache_lock_work_without_fcntl(tmp_path):
    code = f"""
        import sys
        sys.modules["fcntl"] = None  # import fcntl now raises ImportError, as on Windows
        try:
            import fcntl
        except ImportError:
            print("no-fcntl")
        import gradood, gradood.features, gradood.harness.plugin
        print("imported")
        from pathlib import Path
        from gradood.locking import exclusive_lock
        path = Path({str(tmp_path / "x.lock")!r})
        with exclusive_lock(path):
            assert path.exists()
        assert not path.exists()
        print("locked-and-released")
        """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["no-fcntl", "imported", "locked-and-released"]
