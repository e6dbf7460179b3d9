"""Ray's SIGTERM traceback is dropped in the search's workers (search/worker_setup.py), nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from search import driver, worker_setup

ROOT = Path(__file__).resolve().parents[1]


def _unraisable(raiser) -> types.SimpleNamespace:
    try:
        raiser()
    except BaseException as exc:  # noqa: BLE001 - SystemExit is the point
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
                                     err_msg=None, object=raiser)  # fmt: skip
    raise AssertionError("did not raise")


def sigterm_handler():  # named as Ray's handler is (ray/_private/worker.py)
    raise SystemExit(1)


def other_exit():
    raise SystemExit(1)


def other_error():
    raise ValueError("a real problem")


def test_only_a_systemexit_from_rays_handler_is_dropped(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_type.__name__))
    worker_setup.quiet_sigterm_exit()
    worker_setup.quiet_sigterm_exit()  # a second task in the same worker: not wrapped twice
    assert sys.unraisablehook._drops_rays_sigterm
    for raiser in (sigterm_handler, other_exit, other_error):
        sys.unraisablehook(_unraisable(raiser))
    assert seen == ["SystemExit", "ValueError"]


def test_the_hook_is_left_out_when_the_submitted_job_has_its_own(monkeypatch):
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    monkeypatch.delenv(RAY_JOB_CONFIG_JSON_ENV_VAR, raising=False)
    assert driver.worker_runtime_env() == {"worker_process_setup_hook": driver.WORKER_SETUP}
    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, '{"runtime_env": {"working_dir": "gcs://x.zip"}}')
    assert driver.worker_runtime_env() == {"worker_process_setup_hook": driver.WORKER_SETUP}
    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, '{"runtime_env": {"worker_process_setup_hook": "m.f"}}')
    assert driver.worker_runtime_env() is None  # Ray would refuse the field twice; the user's wins


# A worker whose main thread gets SIGTERM inside a weakref callback: Ray's handler raises SystemExit there,
# Python can only print it, and Ray forwards that to the driver (as on CI, 2026-12-02, after a Ctrl-C).
DRIVER = textwrap.dedent("""
    import os, signal, sys, time, weakref
    if sys.argv[1] == "ours":
        from search.driver import start_ray
        start_ray(None)
    else:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        import ray
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    import ray

    @ray.remote
    def stopped_in_a_callback():
        class Thing:
            pass
        thing = Thing()
        def callback(ref):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here, inside the callback
        ref = weakref.ref(thing, callback)
        del thing
        return "the task returned"

    print(ray.get(stopped_in_a_callback.remote()), flush=True)
    time.sleep(3)  # the worker's output reaches the driver asynchronously
    ray.shutdown()
""")


@pytest.mark.slow  # two local Ray starts: ~30 s on 2 cores
@pytest.mark.parametrize("how", ["plain", "ours"])
def test_a_worker_stopped_inside_a_callback_prints_no_traceback_through_our_driver(tmp_path, how):
    script = tmp_path / "drive.py"
    script.write_text(DRIVER)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, str(script), how], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "the task returned" in text, text[-3000:]
    if how == "plain":  # Ray as it is: the traceback reaches the driver (so the other case can fail)
        assert "sigterm_handler" in text and "SystemExit" in text, text[-3000:]
    else:
        assert "Traceback" not in text and "SystemExit" not in text, text[-3000:]
