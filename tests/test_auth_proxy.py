"""docker-compose's `auth` profile, tried with the real Caddyfile in front of the real dashboard:
Caddy (Debian's package, as on this machine; the compose file uses the caddy:2 image) asks for
the user and password, and once given proxies both the dashboard's pages and the websocket that
Streamlit draws every page through. No Docker here, so the two run as processes on free ports."""

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CADDY = shutil.which("caddy")
USER, PASSWORD = "bpnet", "correct horse"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CADDY is None, reason="Caddy is not installed (apt-get install -y caddy): "
                                                       "the auth profile's docker/Caddyfile cannot be tried")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, auth=None):
    """HTTP status of a GET, with basic auth when given."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def websocket_status(port, path, auth=None):
    """Status line of a websocket handshake (101 = upgraded) sent through the proxy."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    if auth:
        lines.append("Authorization: Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return conn.recv(200).decode(errors="replace").split("\r\n", 1)[0]


def wait_until(check, what, timeout_s=90):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} did not answer within {timeout_s} s")


@pytest.fixture
def proxied_dashboard(tmp_path):
    """(proxy port) of Caddy with docker/Caddyfile in front of a dashboard on a fresh data dir."""
    dash_port, proxy_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["BPNET_STUDIO_HOME"] = str(tmp_path / "studio")
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(dash_port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    hashed = subprocess.run([CADDY, "hash-password", "--plaintext", PASSWORD], capture_output=True, text=True,
                            check=True).stdout.strip()
    caddy_env = {**env, "STUDIO_USER": USER, "STUDIO_PASSWORD_HASH": hashed, "STUDIO_PROXY_PORT": str(proxy_port),
                 "STUDIO_UPSTREAM": f"127.0.0.1:{dash_port}", "XDG_DATA_HOME": str(tmp_path / "caddy"),
                 "XDG_CONFIG_HOME": str(tmp_path / "caddy")}
    proxy = subprocess.Popen([CADDY, "run", "--config", str(ROOT / "docker" / "Caddyfile"), "--adapter", "caddyfile"],
                             env=caddy_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{dash_port}/_stcore/health") == 200, "the dashboard")
        wait_until(lambda: get(f"http://127.0.0.1:{proxy_port}/") == 401, "Caddy")
        yield proxy_port
    finally:
        for process in (proxy, dashboard):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_the_auth_proxy_asks_for_the_password_and_then_proxies_pages_and_websocket(proxied_dashboard):
    port = proxied_dashboard
    base = f"http://127.0.0.1:{port}"
    assert get(f"{base}/") == 401
    assert get(f"{base}/_stcore/health", auth=(USER, "wrong")) == 401
    assert websocket_status(port, "/_stcore/stream").split()[1] == "401"
    assert get(f"{base}/", auth=(USER, PASSWORD)) == 200
    assert get(f"{base}/_stcore/health", auth=(USER, PASSWORD)) == 200
    assert websocket_status(port, "/_stcore/stream", auth=(USER, PASSWORD)).split()[1] == "101"
