"""Device tokens cached beside their keys for the next command (ADR 0045)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from gapferry.connected import devices as devops
from gapferry.connected.keystore import KeyAlgorithm, Keystore
from gapferry.connected.session import token_binding
from gapferry.fixtures.connected_world import SERVER, World

AUTH = "/api/devices/v1/authentication/auth_requests"
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+")


def _auths(world: World, since: int) -> int:
    return sum(1 for r in world.sim.requests[since:] if r.path == AUTH)


def _token_file(world: World, device: str = "pump-000") -> Path:
    return world.state / "keys" / world.site.name / f"{device}.jwt"


def test_pack_and_ingest_reuse_the_token_of_an_earlier_command(world: World) -> None:
    world.release()  # enrolls and authenticates every device: the token is cached
    token_file = _token_file(world)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    mark = len(world.sim.requests)
    packed = world.pack()
    assert packed.ok, packed
    assert packed.bundle_path is not None
    assert _auths(world, mark) == 0
    # Cached tokens: inventory (first pack: not confirmed yet), /next, installing (plus the one
    # artifact fetch).
    device_calls = [r for r in world.sim.requests[mark:] if "/api/devices/" in r.path]
    assert len(device_calls) == 3
    world.write_result(packed.bundle_path)
    mark = len(world.sim.requests)
    ingested = world.ingest()
    assert ingested.ok, ingested
    assert _auths(world, mark) == 0
    assert [s for _, _, s in world.status_puts()] == ["installing", "success"]


def test_a_rejected_cached_token_is_renewed_once_and_the_new_one_cached(world: World) -> None:
    world.release()
    before = _token_file(world).stat().st_ino
    world.sim.expire_tokens_now()  # the cached token now gets a bare 401
    mark = len(world.sim.requests)
    packed = world.pack()
    assert packed.ok, packed
    assert _auths(world, mark) == 1
    assert [r.status for r in world.sim.requests[mark:] if r.path == AUTH] == [200]
    assert _token_file(world).stat().st_ino != before  # written anew
    mark = len(world.sim.requests)
    assert world.pack().ok  # the renewed token is the cached one now
    assert _auths(world, mark) == 0


def test_a_token_is_reused_only_for_its_server_identity_and_key(tmp_path: Path) -> None:
    w = World(tmp_path)
    try:
        w.release()
        ks = Keystore(w.state / "keys" / w.site.name)
        dev = w.site.devices[0]
        pub = ks.public_pem(dev.name)
        right = token_binding(
            server_url=SERVER, identity=dict(dev.identity), public_pem=pub, tenant_token=None
        )
        assert ks.load_token(dev.name, binding=right) is not None
        for other in (
            token_binding(
                server_url="https://other.example",
                identity=dict(dev.identity),
                public_pem=pub,
                tenant_token=None,
            ),
            token_binding(
                server_url=SERVER, identity={"mac": "other"}, public_pem=pub, tenant_token=None
            ),
            token_binding(
                server_url=SERVER, identity=dict(dev.identity), public_pem="x", tenant_token=None
            ),
            token_binding(
                server_url=SERVER,
                identity=dict(dev.identity),
                public_pem=pub,
                tenant_token="another-tenant",
            ),
        ):
            assert ks.load_token(dev.name, binding=other) is None
        # A token file others may read is not used (and the next auth rewrites it 0600).
        ks.token_path(dev.name).chmod(0o644)
        assert ks.load_token(dev.name, binding=right) is None
        mark = len(w.sim.requests)
        assert w.pack().ok
        assert _auths(w, mark) == 1
        assert stat.S_IMODE(ks.token_path(dev.name).stat().st_mode) == 0o600
        # A damaged file is ignored, not an error.
        ks.token_path(dev.name).write_bytes(b"{not json")
        ks.token_path(dev.name).chmod(0o600)
        assert ks.load_token(dev.name, binding=right) is None
    finally:
        w.close()


def test_no_token_is_cached_beside_a_passphrase_protected_key(tmp_path: Path) -> None:
    ks = Keystore(tmp_path / "keys")
    ks.generate("d", algorithm=KeyAlgorithm.ED25519, passphrase=b"s3cret-pass")
    assert ks.is_encrypted("d")
    assert not ks.save_token("d", "eyJh.eyJi.c2ln", binding="b")
    assert not ks.token_path("d").exists()
    # Even a token file placed there is not used beside an encrypted key.
    ks.token_path("d").write_bytes(b'{"binding":"b","token":"eyJh.eyJi.c2ln"}')
    ks.token_path("d").chmod(0o600)
    assert ks.load_token("d", binding="b") is None


def test_cleanup_deletes_the_cached_token_in_both_modes(tmp_path: Path) -> None:
    for mode in ("static", "rotating"):
        w = World(tmp_path / mode, mode=mode)
        try:
            w.release()
            assert _token_file(w).exists()
            with w.session() as s:
                rows = devops.cleanup(s, w.site, w.site.devices)
            assert all(r.ok for r in rows), rows
            assert not _token_file(w).exists()
            assert (w.state / "keys" / w.site.name / "pump-000.key").exists() is (mode == "static")
        finally:
            w.close()


def test_tokens_stay_out_of_the_ledger_and_the_media(world: World) -> None:
    world.release()
    packed = world.pack()
    assert packed.ok
    assert _token_file(world).exists()
    for path in [*world.state.glob("ledger.sqlite*"), *world.media.rglob("*")]:
        if path.is_file():
            assert _JWT.search(path.read_bytes()) is None, path
