"""The loopback face: HTTP and HTTPS server, streaming, dropped connections, SQLite state, and
`gapferry sim serve`."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gapferry.common.artifact.writer import PayloadSource, write_module_image
from gapferry.fixtures.sim import Fault, MenderSim, running_server
from gapferry.fixtures.sim.devicekit import authenticate, new_key, preauthorize

DEPM = "/api/management/v1/deployments"


def big_artifact(tmp: Path, name: str = "big", size: int = 3 * 1024 * 1024) -> Path:
    payload = tmp / "payload.bin"
    payload.write_bytes(os.urandom(size))
    out = tmp / f"{name}.mender"
    write_module_image(
        out,
        artifact_name=name,
        device_types=["dev"],
        payload_type="single-file",
        files=[PayloadSource(name="payload.bin", path=payload)],
        compression="none",
    )
    return out


def test_chunked_streaming_upload_and_download(tmp_path: Path) -> None:
    sim = MenderSim(artifact_dir=tmp_path / "store", management_token="pat")
    art = big_artifact(tmp_path)

    def chunks() -> Iterator[bytes]:
        boundary = b"bnd"
        yield b'--bnd\r\nContent-Disposition: form-data; name="artifact"; filename="a"\r\n\r\n'
        with art.open("rb") as f:
            while c := f.read(100_000):
                yield c
        yield b"\r\n--" + boundary + b"--\r\n"

    with (
        running_server(sim) as url,
        httpx.Client(base_url=url, headers={"Authorization": "Bearer pat"}) as c,
    ):
        assert url.startswith("http://127.0.0.1:")
        r = c.post(
            DEPM + "/artifacts",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=bnd"},
        )
        assert r.status_code == 201, r.text
        [a] = c.get(DEPM + "/artifacts").json()
        link = c.get(DEPM + f"/artifacts/{a['id']}/download").json()["uri"]
        assert link.startswith(url + "/sim/download/")
        with c.stream("GET", link) as resp:
            assert resp.headers["content-length"] == str(art.stat().st_size)
            got = b"".join(resp.iter_bytes())
        assert got == art.read_bytes()
        # keep-alive still fine after an early error that did not read the body
        r = c.post(DEPM + "/artifacts", content=b"x" * 10, headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        assert c.get(DEPM + "/artifacts").status_code == 200


def test_drop_fault_over_socket(tmp_path: Path) -> None:
    sim = MenderSim(artifact_dir=tmp_path, management_token="pat")
    sim.faults.add(Fault(r".*", kind="drop"))
    with (
        running_server(sim) as url,
        httpx.Client(base_url=url, headers={"Authorization": "Bearer pat"}) as c,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            c.get(DEPM + "/artifacts")
        assert c.get(DEPM + "/artifacts").status_code == 200


def test_https_with_self_signed_cert(tmp_path: Path) -> None:
    sim = MenderSim(artifact_dir=tmp_path / "s", management_token="pat")
    with running_server(sim, cert_dir=tmp_path) as url:
        assert url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "sim-cert.pem"))
        with httpx.Client(base_url=url, verify=ctx) as c:
            key = new_key("ec256")
            c.headers["Authorization"] = "Bearer pat"
            assert preauthorize(c, key, {"n": "1"}).status_code == 201
            del c.headers["Authorization"]
            assert authenticate(c, key, {"n": "1"}).status_code == 200
        assert (tmp_path / "sim-key.pem").stat().st_mode & 0o077 == 0
        with httpx.Client(base_url=url) as c, pytest.raises(httpx.ConnectError):
            c.get("/")


def test_state_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "sim.sqlite"
    sim = MenderSim(artifact_dir=tmp_path / "arts", management_token="pat", state_file=state)
    with (
        running_server(sim) as url,
        httpx.Client(base_url=url, headers={"Authorization": "Bearer pat"}) as c,
    ):
        key = new_key("ec256")
        preauthorize(c, key, {"n": "1"})
        del c.headers["Authorization"]
        tok = authenticate(c, key, {"n": "1"}).text
    assert state.stat().st_mode & 0o077 == 0
    again = MenderSim(artifact_dir=tmp_path / "arts", management_token="pat", state_file=state)
    [dev] = again.devices()
    assert dev["status"] == "accepted"
    with running_server(again) as url, httpx.Client(base_url=url) as c:
        r = c.get(
            "/api/devices/v1/deployments/device/deployments/next",
            params={"artifact_name": "a", "device_type": "t"},
            headers={"Authorization": f"Bearer {tok}"},
        )
        assert r.status_code == 204  # the old token still verifies: same signing key


def test_cli_serve_prints_url_and_tokens(tmp_path: Path) -> None:
    gapferry = Path(sys.executable).parent / "gapferry"
    state = tmp_path / "demo.sqlite"
    p = subprocess.Popen(
        [
            str(gapferry),
            "sim",
            "serve",
            "--port",
            "0",
            "--state",
            str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        # the token through the environment, not argv (TEAM.md: no tokens in process arguments)
        env={**os.environ, "GAPFERRY_SIM_MANAGEMENT_TOKEN": "demo-pat"},
    )
    try:
        assert p.stdout is not None
        first = p.stdout.readline()
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
        assert m, first
        rest = [p.stdout.readline() for _ in range(2)]
        assert "management token (PAT): demo-pat" in rest[0]
        assert "login" in rest[1]
        with httpx.Client(base_url=m.group(1), headers={"Authorization": "Bearer demo-pat"}) as c:
            assert c.get("/api/management/v2/devauth/devices").status_code == 200
            assert (
                c.get(
                    "/api/management/v2/devauth/devices", headers={"Authorization": "Bearer x"}
                ).status_code
                == 401
            )
            assert preauthorize(c, new_key("ec256"), {"n": "kept"}).status_code == 201
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        if p.stdout is not None:
            p.stdout.close()
    assert p.returncode == 0
    # --state kept the device across the restart
    again = MenderSim(artifact_dir=tmp_path / "a", state_file=state)
    assert [d["identity_data"] for d in again.devices()] == [{"n": "kept"}]


def _serve(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start `gapferry sim serve ARGS` as a user would; return it and what it printed."""
    gapferry = Path(sys.executable).parent / "gapferry"
    env = {k: v for k, v in os.environ.items() if k != "GAPFERRY_SIM_MANAGEMENT_TOKEN"}
    p = subprocess.Popen(
        [str(gapferry), "sim", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert p.stdout is not None
    printed: dict[str, str] = {}
    while "login" not in printed:
        line = p.stdout.readline()
        assert line, f"sim serve exited early (rc {p.poll()})"
        if m := re.search(r"listening on (https://127\.0\.0\.1:\d+)$", line):
            printed["url"] = m.group(1)
        elif line.startswith("TLS certificate: "):
            printed["cert"] = line.split(": ", 1)[1].strip()
        elif line.startswith("management token (PAT): "):
            printed["pat"] = line.split(": ", 1)[1].strip()
        elif line.startswith("login"):
            printed["login"] = line.strip()
    return p, printed


def _stop(p: subprocess.Popen[str], sig: signal.Signals) -> int:
    p.send_signal(sig)
    try:
        return p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        if p.stdout is not None:
            p.stdout.close()


def test_cli_serve_tls_state_survives_restart(tmp_path: Path) -> None:
    """`sim serve --tls --state FILE`: a restart keeps the devices, the certificate the clients
    trust and the generated token; SIGTERM stops it cleanly."""
    state = tmp_path / "demo.sqlite"
    p, first = _serve("--tls", "--state", str(state))
    try:
        assert first["cert"] == f"{state}.tls/sim-cert.pem"
        assert first["pat"].startswith("sim-pat-")
        assert (Path(first["cert"]).parent / "sim-key.pem").stat().st_mode & 0o077 == 0
        trusted = Path(first["cert"]).read_bytes()
        ctx = ssl.create_default_context(cafile=first["cert"])
        with httpx.Client(
            base_url=first["url"], verify=ctx, headers={"Authorization": f"Bearer {first['pat']}"}
        ) as c:
            assert preauthorize(c, new_key("ec256"), {"n": "kept"}).status_code == 201
    finally:
        assert _stop(p, signal.SIGTERM) == 0
    p, second = _serve("--tls", "--state", str(state))
    try:
        assert (second["cert"], second["pat"]) == (first["cert"], first["pat"])
        ctx = ssl.create_default_context(cadata=trusted.decode())
        with httpx.Client(
            base_url=second["url"], verify=ctx, headers={"Authorization": f"Bearer {first['pat']}"}
        ) as c:
            devices = c.get("/api/management/v2/devauth/devices").json()
            assert [d["identity_data"] for d in devices] == [{"n": "kept"}]
    finally:
        assert _stop(p, signal.SIGTERM) == 0


def test_cli_serve_tls_sigterm_removes_temporary_key(tmp_path: Path) -> None:
    p, printed = _serve("--tls")
    cert = Path(printed["cert"])
    try:
        assert (cert.parent / "sim-key.pem").is_file()
        ctx = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=printed["url"], verify=ctx) as c:
            r = c.get("/api/management/v2/devauth/devices")
            assert r.status_code == 401  # a generated token, not a guessable one
    finally:
        assert _stop(p, signal.SIGTERM) == 0
    assert not cert.parent.exists()


def test_upload_and_download_never_hold_the_artifact(tmp_path: Path) -> None:
    import tracemalloc

    size = 40 * 1024 * 1024
    art = big_artifact(tmp_path, "huge", size=size)
    sim = MenderSim(artifact_dir=tmp_path / "store", management_token="pat")

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="artifact"; filename="a"\r\n\r\n'
        with art.open("rb") as f:
            while c := f.read(256 * 1024):
                yield c
        yield b"\r\n--b--\r\n"

    with (
        running_server(sim) as url,
        httpx.Client(base_url=url, headers={"Authorization": "Bearer pat"}, timeout=60) as c,
    ):
        # Only the upload and the download are measured; a small upload first warms up the
        # suite's spec check, which allocates on first use of each operation.
        (tmp_path / "small").mkdir()
        small = big_artifact(tmp_path / "small", "small", size=1024)
        with small.open("rb") as f:
            assert c.post(DEPM + "/artifacts", files={"artifact": ("s", f)}).status_code == 201
        tracemalloc.start()
        try:
            r = c.post(
                DEPM + "/artifacts",
                content=body(),
                headers={"Content-Type": "multipart/form-data; boundary=b"},
            )
            _, up_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert r.status_code == 201, r.text
        a = next(x for x in c.get(DEPM + "/artifacts").json() if x["name"] == "huge")
        link = c.get(DEPM + f"/artifacts/{a['id']}/download").json()["uri"]
        tracemalloc.start()
        try:
            n = 0
            with c.stream("GET", link) as resp:
                for chunk in resp.iter_raw():
                    n += len(chunk)
            _, down_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert n == art.stat().st_size
    assert up_peak < 8 * 1024 * 1024, f"upload peak {up_peak} bytes for {size} bytes"
    assert down_peak < 8 * 1024 * 1024, f"download peak {down_peak} bytes for {size} bytes"


def test_cli_serve_port_in_use_exits_4(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gapferry = Path(sys.executable).parent / "gapferry"
        r = subprocess.run(
            [str(gapferry), "sim", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert r.returncode == 4  # environment failure (cliutil), no traceback
    assert f"cannot listen on 127.0.0.1 port {port}" in r.stderr
    assert "Traceback" not in r.stderr
