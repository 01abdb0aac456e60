"""tqdm progress bars: on when asked, on a terminal in 'auto' mode, silent otherwise.

Each case runs a small program in a fresh interpreter and reads what it wrote to its
stderr -- a pipe, or a pseudo-terminal for the interactive case -- so the decision
the library makes from the real stream is what is tested.
"""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import tempfile
import termios
import textwrap
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOUND = 120

PROGRAM = textwrap.dedent("""
    import sys, time
    from cloudpool import CloudPoolExecutor
    from cloudpool.multiprocessing import Pool

    def slow_square(x):
        time.sleep({delay})
        return x * x

    if __name__ == "__main__":
        mode, progress = sys.argv[1], sys.argv[2]
        progress = {{"true": True, "false": False}}.get(progress, progress)
        config = {{"progress": progress, "storage": sys.argv[3]}}
        if mode == "map":
            with CloudPoolExecutor(2, config=config) as ex:
                out = list(ex.map(slow_square, range(50)))
        elif mode == "chunked":
            with CloudPoolExecutor(2, config=config) as ex:
                out = list(ex.map(slow_square, range(40), chunksize=7))
        else:
            with Pool(2, config=config) as p:
                out = p.map(slow_square, range(100))
        assert out == [x * x for x in range(len(out))]
        print("RESULT-OK", len(out))
""")


class ProgressTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="cloudpool-progress-")
        self.addCleanup(self._tmp.cleanup)
        self.script = os.path.join(self._tmp.name, "prog.py")
        self.storage = "file://" + os.path.join(self._tmp.name, "bucket")

    def write(self, delay: float) -> None:
        with open(self.script, "w") as f:
            f.write(PROGRAM.format(delay=delay))

    def run_piped(self, mode: str, progress: str):
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("CLOUDPOOL_PROGRESS", None)
        proc = subprocess.run([sys.executable, self.script, mode, progress, self.storage],
                              capture_output=True, text=True, timeout=BOUND, env=env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("RESULT-OK", proc.stdout)
        return proc.stderr

    def test_forced_bar_counts_every_call(self):
        self.write(0.0)
        err = self.run_piped("map", "true")
        self.assertRegex(err, r"slow_square: 100%.*50/50")

    def test_chunked_map_counts_items_not_chunks(self):
        self.write(0.0)
        err = self.run_piped("chunked", "true")
        self.assertRegex(err, r"40/40")
        self.assertNotRegex(err, r"\b6/6\b")

    def test_pool_map_shows_a_bar(self):
        self.write(0.0)
        err = self.run_piped("pool", "true")
        self.assertRegex(err, r"100/100")

    def test_auto_is_silent_when_not_a_terminal(self):
        self.write(0.03)  # long enough that a bar would be drawn if it were wanted
        err = self.run_piped("map", "auto")
        self.assertNotIn("50/50", err)
        self.assertNotIn("call/s", err)

    def test_false_is_silent(self):
        self.write(0.0)
        self.assertNotIn("50/50", self.run_piped("map", "false"))

    def test_auto_draws_on_a_terminal(self):
        self.write(0.03)  # 50 calls x 30 ms on 2 workers: past the half-second delay
        master, slave = pty.openpty()
        # A real terminal has a size (a fresh pty has 0 x 0, where a bar has no room).
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("CLOUDPOOL_PROGRESS", None)
        proc = subprocess.Popen([sys.executable, self.script, "map", "auto", self.storage],
                                stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                                env=env)
        os.close(slave)
        chunks = []
        deadline = time.monotonic() + BOUND
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.5)
                if ready:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: the child closed the terminal
                        break
                    if not data:
                        break
                    chunks.append(data)
                elif proc.poll() is not None:
                    break
            out, _ = proc.communicate(timeout=BOUND)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
        self.assertEqual(proc.returncode, 0)
        self.assertIn(b"RESULT-OK", out)
        text = b"".join(chunks).decode("utf-8", "replace")
        self.assertTrue(re.search(r"50/50", text), text[-500:])


if __name__ == "__main__":
    unittest.main()
