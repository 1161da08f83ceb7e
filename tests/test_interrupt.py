"""SIGTERM/SIGINT on a driver: one clean stop with the caller's line, a hard exit on the second."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.interrupt import Interrupted, on_interrupt

ROOT = Path(__file__).resolve().parents[1]

LOOP = """
import time
from pipeline.interrupt import on_interrupt
with on_interrupt("stopped by {signal}; rerun the same command to resume"):
    try:
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
    finally:
        print("cleanup", flush=True)
        %s
"""


def _start(cleanup: str = "pass") -> subprocess.Popen:
    code = textwrap.dedent(LOOP % cleanup)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert p.stdout.readline() == "ready\n"
    return p


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_with_the_callers_line_and_shell_exit_code(sig, code):
    p = _start()
    p.send_signal(sig)
    out, err = p.communicate(timeout=20)
    assert p.returncode == code
    assert out == "cleanup\n"  # finally blocks run
    assert err == f"stopped by {sig.name}; rerun the same command to resume\n"


def test_second_signal_while_stopping_exits_hard():
    p = _start(cleanup="print('stuck', flush=True); time.sleep(600)")
    p.send_signal(signal.SIGTERM)
    assert p.stdout.readline() == "cleanup\n"
    assert p.stdout.readline() == "stuck\n"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 143
    assert "SIGTERM again while stopping: exiting now without cleanup" in err
    assert "rerun" not in err  # the clean-stop line is not printed


def test_shield_defers_the_signal_to_its_end_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    steps = []
    with pytest.raises(Interrupted) as e:
        with on_interrupt() as stop:
            with stop.shield():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("after kill")  # the handler has run; the shield holds the raise
                assert stop.requested
            steps.append("after shield")
    assert steps == ["after kill"]
    assert (e.value.signal_name, e.value.exit_code) == ("SIGTERM", 143)
    assert signal.getsignal(signal.SIGTERM) is before


SIGTERM_IN_RAY_INIT = """
import os, signal, sys, threading, time
from pipeline.cluster import init_ray
from pipeline.config import parse_config
from pipeline.interrupt import Interrupted, on_interrupt

cfg = parse_config({"input": {"manifest": "m"}, "output": {"path": "o"}, "ray": {"num_cpus": 1}})
with on_interrupt() as stop:
    ours = signal.getsignal(signal.SIGTERM)

    def kill_once_ray_handles_it():  # the signal arrives while ray.init runs, under Ray's handler
        while signal.getsignal(signal.SIGTERM) is ours:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_once_ray_handles_it, daemon=True).start()
    try:
        init_ray(cfg)
        time.sleep(5)
        print("not interrupted", flush=True)
    except Interrupted as e:
        print("interrupted", e.exit_code, signal.getsignal(signal.SIGTERM) is ours, flush=True)
    finally:
        import ray
        ray.shutdown()
"""


def test_sigterm_while_ray_starts_is_the_callers_interrupt(tmp_path):
    """ray.init installs a SIGTERM handler of its own (sys.exit(15)) when it starts: a SIGTERM while it
    runs ended e2v-extract with exit 15 and no line, not as an interrupt (143, lease released)."""
    script = tmp_path / "sigterm_in_init.py"
    script.write_text(SIGTERM_IN_RAY_INIT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "RAY_AUTH_MODE": "token"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert r.stdout.strip().splitlines()[-1:] == ["interrupted 143 True"], (r.returncode, r.stderr[-3000:])


NESTED = """
import time
from pipeline.interrupt import Interrupted, on_interrupt

# as e2v-extract runs the job: main's block around run(), run()'s own block around each attempt
try:
    with on_interrupt():
        try:
            with on_interrupt():
                print("ready", flush=True)
                while True:
                    time.sleep(0.05)
        finally:  # run()'s clean-up after the attempt's block: the lease, ray.shutdown()
            print("cleanup", flush=True)
            time.sleep(600)
except Interrupted as e:
    print("interrupted again", flush=True)
    raise SystemExit(e.exit_code)
"""


def test_second_signal_in_the_clean_up_after_an_inner_block_exits_hard(tmp_path):
    """The job nests two blocks (e2v-extract's around run(), run()'s around each attempt). A first
    signal in the attempt left the inner block; a second one while run() cleaned up (releasing the
    lease, shutting Ray down) met the outer block's handler, which had seen no signal: it raised
    Interrupted into the clean-up instead of exiting at once."""
    script = tmp_path / "nested.py"
    script.write_text(NESTED)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    assert p.stdout.readline() == "cleanup\n"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 130, (out, err)
    assert "SIGINT again while stopping: exiting now without cleanup" in err
    assert out == ""


def test_a_signal_inside_a_shield_that_ends_in_an_error_still_stops():
    """A commit (in a shield) that fails after a SIGTERM arrived: the error left the shield and the
    signal was dropped, so the job restarted the pipeline on what was left instead of stopping."""
    with pytest.raises(Interrupted) as e:
        with on_interrupt() as stop:
            with stop.shield():
                os.kill(os.getpid(), signal.SIGTERM)
                raise OSError("the marker write failed")
    assert (e.value.signal_name, e.value.exit_code) == ("SIGTERM", 143)
    assert isinstance(e.value.__context__, OSError)
