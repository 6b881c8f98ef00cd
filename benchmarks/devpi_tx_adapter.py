"""
devpi-tx adapter for the pypi-bench harness (``bench.py`` with its
``adapters.py``; see its README, "Writing an adapter for a new server").

The harness loads this file by path and takes the class by name::

    DEVPI_TX_VENV=/work/venv python bench.py \\
        --adapter /path/to/devpi-tx/benchmarks/devpi_tx_adapter.py:DevpiTx \\
        --workdir SCRATCH --out results/devpi-tx.json

It imports ``adapters`` from the harness (``bench.py`` has already done so
when it loads this file), so it only works when loaded by the harness.

devpi-tx runs from the venv named by ``DEVPI_TX_VENV``; without it, from the
venv of the interpreter running the harness if that has ``twistd``, else
from ``/work/venv``.  This checkout is put first on ``PYTHONPATH`` so that its
``twisted/plugins/`` (the ``devpi`` twistd plugin) is the one used.

Setup mirrors the harness's devpi-server adapter: root/pypi mirrors the fake
upstream (created by devpi-tx on its first start from ``--mirror-url``), and
``configure()`` creates user ``bench`` (password ``bench``) and the hosted
index ``bench/dev`` (``bases`` empty, ``volatile`` true) through the HTTP API.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

try:
    from adapters import Adapter
except ModuleNotFoundError as e:  # pragma: no cover - only outside the harness
    raise ImportError(
        "devpi_tx_adapter.py is loaded by the pypi-bench harness: "
        "bench.py --adapter .../devpi_tx_adapter.py:DevpiTx"
    ) from e

REPO_ROOT = Path(__file__).resolve().parent.parent


def devpi_tx_venv() -> Path:
    env = os.environ.get("DEVPI_TX_VENV")
    if env:
        return Path(env)
    here = Path(sys.prefix)
    if (here / "bin" / "twistd").exists():
        return here
    return Path("/work/venv")


class DevpiTx(Adapter):
    """devpi-tx (Twisted/Klein): root/pypi mirrors the fake upstream; bench/dev is hosted."""

    name = "devpi-tx"
    ready_path = "/+api"
    upload_auth = ("bench", "bench")
    notes = "devpi-tx under twistd -n, default settings; SQLite state."

    @property
    def mirror_url(self):
        return f"{self.base}/root/pypi/+simple/"

    @property
    def hosted_url(self):
        return f"{self.base}/bench/dev/+simple/"

    @property
    def upload_url(self):
        return f"{self.base}/bench/dev/"

    def init(self):
        # devpi-tx initialises an empty server dir on its first start.
        super().init()

    def command(self):
        twistd = devpi_tx_venv() / "bin" / "twistd"
        if not twistd.exists():
            raise RuntimeError(f"{twistd} not found; set DEVPI_TX_VENV to devpi-tx's venv")
        return [
            str(twistd),
            "-n",
            "--pidfile=",
            "devpi",
            "--serverdir",
            self.server_dir,
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--mirror-url",
            self.upstream_simple,
        ]

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVPISERVER_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _call(self, method, path, body, auth=None):
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if auth:
            token = base64.b64encode(":".join(auth).encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        req = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(
                f"{method} {path} gave {e.code}: {e.read()[:300].decode('utf-8', 'replace')}"
            ) from None

    def configure(self):
        user, password = self.upload_auth
        self._call("PUT", f"/{user}", {"password": password, "email": "b@example.invalid"})
        self._call(
            "PUT",
            f"/{user}/dev",
            {"type": "stage", "bases": [], "volatile": True},
            auth=self.upload_auth,
        )


class DevpiTxHosted(DevpiTx):
    """
    devpi-tx as a hosted-only server: no mirror URL is given to the harness.

    Runs 1 and 2 used it, from before root/pypi fetched from upstream; it
    still serves to compare hosted file serving with pypiserver.  Without a
    mirror URL the harness
    treats the server like pypiserver: it uploads the 50 MB wheel to the hosted
    index ``bench/dev`` and measures downloads from there, and the mirror
    scenarios are recorded as n/a.
    """

    name = "devpi-tx (hosted)"
    notes = DevpiTx.notes + " Hosted only (mirror not implemented): 50 MB file served from bench/dev."

    @property
    def mirror_url(self):
        return None
