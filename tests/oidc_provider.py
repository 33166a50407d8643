"""A real OpenID Connect provider on loopback: the `oidc-provider` package on Node.js.

`make test` installs it (`npm ci` in tests/oidc). Its login form accepts any password
for the logins it is given.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "oidc"


@contextmanager
def oidc_provider(*, redirect_uri: str, accounts: dict, client_id="runboard",
                  client_secret="runboard-test-secret"):
    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js to run the OIDC provider (install Debian's nodejs)")
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        pytest.skip("the oidc-provider package is not installed (npm ci in tests/oidc)")
    config = {"client_id": client_id, "client_secret": client_secret,
              "redirect_uri": redirect_uri, "accounts": accounts}
    process = subprocess.Popen([node, "server.mjs", "0", json.dumps(config)], cwd=HERE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()  # "ready <issuer>", or EOF if it died
        if not line.startswith("ready"):
            raise RuntimeError(f"the OIDC provider did not start: {line!r}")
        yield {"issuer": line.split()[1], "client_id": client_id,
               "client_secret": client_secret}
    finally:
        process.terminate()
        process.wait(timeout=10)
