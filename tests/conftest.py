"""Shared fixtures."""
import functools
import http.server
import importlib.util
import socket
import sys
import threading
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is faster than two fighting other processes for 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(folder served, its URL): an HTTP server on 127.0.0.1 for the download tests."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """The data cache in tmp_path/cache, no proxies, and every dataset's default mirror a closed port
    on 127.0.0.1: no test can download from the internet. Returns the cache folder."""
    from genlab.data import download as dl

    cache = tmp_path / "cache"
    monkeypatch.setenv("GENLAB_DATA", str(cache))
    for var in (*dl.MIRROR_ENV.values(), "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    for name in dl.MIRRORS:
        monkeypatch.setitem(dl.MIRRORS, name, [dead])
    return cache


@pytest.fixture
def step_clock(monkeypatch):
    """A training clock that counts steps: ``step_clock(model, tick)`` makes ``time.perf_counter`` (the
    Trainer's clock) stand still except that every ``train_step`` of registered model ``model`` advances it
    by ``tick`` seconds. A time limit then ends a run after a known number of steps on any machine, however
    slow (a tick that is a power of two keeps the sums exact)."""
    import time

    from genlab.models import MODELS

    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def drive(model: str, tick: float) -> None:
        cls = MODELS[model].cls
        train_step = cls.train_step

        def timed_step(self, *args, **kwargs):
            logs = train_step(self, *args, **kwargs)
            now[0] += tick
            return logs
        monkeypatch.setattr(cls, "train_step", timed_step)
    return drive


def load_behaviour_guard():
    """``scripts/behaviour_guard.py`` as a module (the behaviour-guard and old-run tests share it)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "behaviour_guard.py"
    spec = importlib.util.spec_from_file_location("behaviour_guard", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks the module up while it is built
    spec.loader.exec_module(mod)
    return mod
