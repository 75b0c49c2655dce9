import subprocess
import sys

from llmprune.evaluate.resources import peak_rss_mb

PROGRAM = """
from llmprune.evaluate.resources import peak_rss_mb
before = peak_rss_mb()
block = bytearray({size} * 1024 * 1024)
block[::4096] = b"x" * len(block[::4096])
print(before, peak_rss_mb())
"""


def run(size_mb: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(size=size_mb)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    before, after = map(float, out.split())
    return before, after


def test_peak_rss_sees_an_allocation():
    before, after = run(300)
    assert after >= before + 250


def test_a_child_does_not_inherit_the_parents_peak():
    block = bytearray(400 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    parent = peak_rss_mb()
    child_before, _ = run(1)
    assert child_before < parent - 300
    del block
