import subprocess
import sys

from llmprune.evaluate.resources import peak_rss_mb


def test_peak_rss_grows_with_an_allocation_and_starts_afresh_in_a_child():
    before = peak_rss_mb()
    block = bytearray(200 * 1024 * 1024)  # touch 200 MiB
    block[::4096] = b"x" * len(block[::4096])
    assert peak_rss_mb() >= before + 150
    code = "from llmprune.evaluate.resources import peak_rss_mb; print(peak_rss_mb())"
    child = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert child < peak_rss_mb() - 150  # not the parent's peak
    del block
