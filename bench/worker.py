"""Benchmark operations that run in a child process of `bench/run.py`, one per invocation.

Each operation runs in its own process, so the parent can measure its wall time and peak RSS
(``os.wait4``) without the parent's memory in the figure; it prints one JSON object on stdout.

    python bench/worker.py pack '{"media": ..., "key": ..., "sources": [[path, sha256, size], ...]}'
    python bench/worker.py apply '{"work": ..., "gapferry": ..., "size": ..., "runs": 3}'
    python bench/worker.py fleet '{"work": ..., "gapferry": ..., "devices": 1000, "seeds": 50}'

The earlier prototypes measured here became the product: `copy-overlapped` and `verify-parallel`
are `gapferry.common.digest.pump` (ADR 0034); `cli-patched`'s one name lookup per deployment and
concurrent ingest delivery are in `connected/pack.py` and `connected/outbox.py` (ADR 0044).

Not a test and not part of the product: nothing here is imported by gapferry.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main", "op_apply", "op_fleet", "op_pack"]

CHUNK = 1024 * 1024


def op_pack(args: dict[str, Any]) -> dict[str, Any]:
    """Write one transfer bundle with `write_transfer_bundle` (the writer `gapferry pack` uses),
    one device per source artifact, the artifact hash known beforehand as `pack` knows it from the
    ledger. Times the read-back separately by wrapping the module's `verify_file`.
    """
    from gapferry.common.bundle import Deployment, default_actor, write_transfer_bundle
    from gapferry.common.bundle.write import ArtifactSource, TransferDevicePlan
    from gapferry.common.media import write as media_write
    from gapferry.common.signers import load_signer

    spent = {"verify": 0.0}
    namespace = vars(media_write)  # `copy_to_medium` looks `verify_file` up here at each call
    real_verify: Callable[..., None] = namespace["verify_file"]

    def timed_verify(*a: Any, **kw: Any) -> None:
        t0 = time.perf_counter()
        try:
            real_verify(*a, **kw)
        finally:
            spent["verify"] += time.perf_counter() - t0

    namespace["verify_file"] = timed_verify
    signer = load_signer(str(args["key"]))
    devices = []
    for i, (path, sha, size) in enumerate(args["sources"]):
        devices.append(
            TransferDevicePlan(
                name=f"dev-{i:04d}",
                mender_device_id=f"00000000-0000-4000-8000-{i:012d}",
                identity={"mac": f"00:11:22:33:{i // 256:02x}:{i % 256:02x}"},
                device_type="bench-board",
                current_artifact_name="fw-1.0",
                deployment=Deployment(id=f"10000000-0000-4000-8000-{i:012d}", name="bench"),
                artifact=ArtifactSource(path=Path(path), name=f"fw-{i}", sha256=sha, size=size),
            )
        )
    t0 = time.perf_counter()
    folder = write_transfer_bundle(
        Path(args["media"]),
        site="bench",
        sequence=int(args.get("sequence", 1)),
        packer=default_actor("bench"),
        devices=devices,
        signers=[signer],
    )
    total = time.perf_counter() - t0
    return {
        "bundle": str(folder),
        "total": total,
        "verify": spent["verify"],
        "write": total - spent["verify"],
    }


# --- fleet ------------------------------------------------------------------------------------
#: Seeds phases 3, 4 and 6 for one device, as ../shared/seeds/000_d9d3b6ee35be0061.txt writes them
#: (jq, openssl dgst -sign, one curl per call), run one device after another.
SEEDS_DEVICE = r"""
seed_device() {
  DEVICE_IDENTITY="{\"mac\":\"$2\"}"
  PRIVATE_KEY="$KEYS/$1.key"
  PUBKEY=$(cat "$KEYS/$1.pub")
  IDENTITY_JSON="$DEVICE_IDENTITY"
  REQUEST_BODY=$(jq -n \
    --arg id_data "$IDENTITY_JSON" \
    --arg tenant_token "$MENDER_TENANT_TOKEN" \
    --arg pubkey "$PUBKEY" \
    '{id_data: $id_data, tenant_token: $tenant_token, pubkey: $pubkey}' \
    --compact-output)
  SIGNATURE=$(echo -n "$REQUEST_BODY" | \
    openssl dgst -sha256 -sign "$PRIVATE_KEY" | \
    openssl base64 -A)
  RESPONSE=$(curl -s -w "\n%{http_code}" \
    -X POST "${SERVER_URL}/api/devices/v1/authentication/auth_requests" \
    -H "X-MEN-Signature: ${SIGNATURE}" \
    -H "Content-Type: application/json" \
    -d "$REQUEST_BODY")
  MENDER_DEVICE_TOKEN=$(echo "$RESPONSE" | head -n -1)
  INVENTORY=$(jq -n \
    --arg hostname "$(hostname)" \
    --arg device_type "$DEVICE_TYPE" \
    '[{name: "hostname", value: $hostname}, {name: "device_type", value: $device_type}]')
  curl -s -X PUT "${SERVER_URL}/api/devices/v1/inventory/device/attributes" \
    -H "Authorization: Bearer ${MENDER_DEVICE_TOKEN}" \
    -H "Content-Type: application/json" \
    -d "$INVENTORY"
  REQUEST=$(jq -n \
    --arg device_type "$DEVICE_TYPE" \
    --arg artifact_name "$CURRENT_ARTIFACT" \
    '{device_type: $device_type, artifact_name: $artifact_name}')
  DEPLOYMENT_INFO=$(curl -s -X POST \
    "${SERVER_URL}/api/devices/v1/deployments/device/deployments/next" \
    -H "Authorization: Bearer $MENDER_DEVICE_TOKEN" \
    -H "Content-Type: application/json" \
    -d "$REQUEST")
  DEPLOYMENT_ID=$(echo "$DEPLOYMENT_INFO" | jq -r '.id // empty')
  ARTIFACT_URI=$(echo "$DEPLOYMENT_INFO" | jq -r '.artifact.source.uri // empty')
  for st in downloading; do
    curl -s -X PUT \
      "${SERVER_URL}/api/devices/v1/deployments/device/deployments/${DEPLOYMENT_ID}/status" \
      -H "Authorization: Bearer ${MENDER_DEVICE_TOKEN}" \
      -H "Content-Type: application/json" \
      -d "{\"status\":\"$st\"}"
  done
  curl -s -L -o "$WORK/downloaded-artifact.mender" "$ARTIFACT_URI"
  for st in installing success; do
    curl -s -X PUT \
      "${SERVER_URL}/api/devices/v1/deployments/device/deployments/${DEPLOYMENT_ID}/status" \
      -H "Authorization: Bearer ${MENDER_DEVICE_TOKEN}" \
      -H "Content-Type: application/json" \
      -d "{\"status\":\"$st\"}"
  done
}
"""


def _endpoint(path: str) -> str:
    """A request path with ids folded, to count requests per kind."""
    parts = path.split("/")
    out = []
    for p in parts:
        is_id = len(p) >= 20 and any(c.isdigit() for c in p)
        out.append("{id}" if is_id else p)
    return "/".join(out)


def _tally(records: list[Any]) -> dict[str, Any]:
    by: dict[str, int] = {}
    bad = 0
    for r in records:
        key = f"{r.method} {_endpoint(r.path)}"
        by[key] = by.get(key, 0) + 1
        if r.status >= 400:
            bad += 1
    return {"total": len(records), "errors": bad, "by_endpoint": dict(sorted(by.items()))}


def _json_doc(text: str) -> Any:
    """The JSON document a command printed (py-spy, when sampling, prints lines of its own)."""
    start = text.find("{")
    return json.JSONDecoder().raw_decode(text, max(start, 0))[0]


def _timed_child(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> dict[str, Any]:
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, etext = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:2]} exit {p.returncode}: {etext[-1500:]} {text[-1500:]}")
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "maxrss": usage.ru_maxrss * 1024,
        "stdout": text,
    }


def op_fleet(args: dict[str, Any]) -> dict[str, Any]:
    """One site of `devices` devices through pack and ingest (real CLI, loopback stand-in), and
    `seeds` devices through the seeds' bash workflow on the same stand-in."""
    from gapferry.connected import devices as devops
    from gapferry.connected import release
    from gapferry.connected.keystore import KeyAlgorithm
    from gapferry.connected.site import load_site
    from gapferry.fixtures.connected_world import DEVICE_TYPE, World
    from gapferry.fixtures.sim import running_server

    n, n_seeds = int(args["devices"]), int(args["seeds"])
    tmp = Path(args["work"])
    profile = args.get("profile")

    def gapferry(cmd: str) -> list[str]:
        """The real CLI; when asked to profile, under cProfile (the main thread only, one .prof
        per command) or `py-spy` (all threads, collapsed stacks, one .txt per command run;
        sampler "py-spy-gil": only the thread holding the GIL, i.e. where the CPU goes)."""
        sampler = args.get("sampler", "")
        if profile and sampler.startswith("py-spy"):
            out = f"{profile}/{cmd}-{time.monotonic_ns()}.txt"
            return [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                *(["--gil"] if sampler == "py-spy-gil" else []),
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                out,
                "--",
                args["gapferry"],
                cmd,
            ]
        if profile:
            return [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                f"{profile}/{cmd}.prof",
                args["gapferry"],
                cmd,
            ]
        return [str(args["gapferry"]), cmd]

    t0 = time.perf_counter()
    world = World(tmp, devices=n)
    world.release("fw-1.1")
    seeds_file = tmp / "seeds.toml"
    lines = ['site = "seeds"', 'mode = "static"', ""]
    for i in range(n_seeds):
        lines += [
            "[[device]]",
            f'name = "seed-{i:03d}"',
            f'device_type = "{DEVICE_TYPE}"',
            'artifact_name = "fw-1.0"',
            f'identity = {{ mac = "02:00:00:00:{i // 256:02x}:{i % 256:02x}" }}',
            "",
        ]
    seeds_file.write_text("\n".join(lines))
    with world.session() as s:
        seeds = load_site(seeds_file)
        devops.keygen(s, seeds, seeds.devices, algorithm=KeyAlgorithm.RSA3072)
        devops.preauthorize(s, seeds, seeds.devices)
        devops.authenticate(s, seeds, seeds.devices)
        release.deploy(s, seeds, seeds.devices, artifact_name="fw-1.1")
    setup = time.perf_counter() - t0
    sim = world.sim
    out: dict[str, Any] = {"devices": n, "seeds": n_seeds, "setup_seconds": setup}
    served: dict[str, float] = {}
    real_handle = sim.handle

    def timed_handle(request: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_handle(request)
        finally:
            key = f"{request.method} {_endpoint(request.url.path)}"
            served[key] = served.get(key, 0.0) + time.perf_counter() - t

    sim.handle = timed_handle  # type: ignore[method-assign]
    with running_server(sim) as url:
        env = dict(os.environ)
        env.update(
            MENDER_SERVER_URL=url,
            MENDER_API_TOKEN=sim.management_token,
            GAPFERRY_STATE=str(world.state),
        )
        env.pop("MENDER_TENANT_TOKEN", None)

        #: `--jobs` for both commands when given (default: the commands' own default).
        jobs = ["--jobs", str(args["jobs"])] if args.get("jobs") else []

        def cycle(media: Path) -> dict[str, Any]:
            """`gapferry pack` onto `media`, a result for every device, `gapferry ingest`."""
            media.mkdir(exist_ok=True)
            mark = len(sim.requests)
            pack = _timed_child(
                [
                    *gapferry("pack"),
                    "--site",
                    str(world.site_file),
                    "--to",
                    str(media),
                    "--sign",
                    str(world.packer_key.private),
                    "--json",
                    *jobs,
                ],
                env,
            )
            doc = _json_doc(pack.pop("stdout"))
            pack["ok"] = doc["ok"]
            pack["packed"] = sum(1 for r in doc["results"] if r["action"] == "packed")
            pack["requests"] = _tally(sim.requests[mark:])
            pack["server_seconds"] = dict(served)
            served.clear()
            world.write_result(str(doc["bundle_path"]), media=media)
            mark = len(sim.requests)
            ingest = _timed_child(
                [
                    *gapferry("ingest"),
                    str(media),
                    "--trust",
                    str(world.appliers),
                    "--json",
                    *jobs,
                ],
                env,
            )
            doc = _json_doc(ingest.pop("stdout"))
            ingest["ok"] = doc["ok"]
            ingest["reported"] = sum(1 for r in doc["results"] if r.get("action") == "reported")
            ingest["requests"] = _tally(sim.requests[mark:])
            ingest["server_seconds"] = dict(served)
            served.clear()
            return {"pack": pack, "ingest": ingest}

        # The first cycle against this server URL authenticates every device (tokens are cached
        # per server URL: ADR 0045); the second, for a new release, reuses the cached tokens.
        out["first"] = cycle(tmp / "media-1")
        with world.session() as s:
            release.upload(s, world.make_artifact("fw-1.2"))
            dep = release.deploy(s, world.site, world.site.devices, artifact_name="fw-1.2")
            if dep.deployment_id is None:
                raise RuntimeError(f"second deployment not created: {dep}")
        out["cached"] = cycle(tmp / "media-2")
        script = tmp / "seeds.sh"
        calls = "\n".join(
            f"seed_device {d.name} {d.identity['mac']}" for d in load_site(seeds_file).devices
        )
        script.write_text(
            "set -u\n"
            f"SERVER_URL={url}\nKEYS={world.state / 'keys' / 'seeds'}\nWORK={tmp}\n"
            f"MENDER_TENANT_TOKEN=\nDEVICE_TYPE={DEVICE_TYPE}\nCURRENT_ARTIFACT=fw-1.0\n"
            + SEEDS_DEVICE
            + calls
            + "\n"
        )
        mark = len(sim.requests)
        seeds_run = _timed_child(["bash", str(script)], env)
        seeds_run.pop("stdout")
        recs = sim.requests[mark:]
        seeds_run["requests"] = _tally(recs)
        seeds_run["server_seconds"] = dict(served)
        seeds_run["successes"] = sum(
            1
            for r in recs
            if r.path.endswith("/status")
            and r.status == 204
            and isinstance(r.json, dict)
            and r.json.get("status") == "success"
        )
        out["seeds_run"] = seeds_run
    return out


# --- apply ------------------------------------------------------------------------------------
def _drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError):  # the parent reports which method the machine allows
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _payload(folder: Path, size: int, dest_dir: Path) -> list[Path]:
    """The single-file module's payload files with `size` random bytes as the file."""
    folder.mkdir(parents=True)
    (folder / "dest_dir").write_text(f"{dest_dir}\n")
    (folder / "filename").write_text("app.bin\n")
    (folder / "permissions").write_text("644\n")
    block = os.urandom(CHUNK)
    left = size
    with (folder / "app.bin").open("wb") as f:
        i = 0
        while left:
            n = min(CHUNK, left)
            f.write(i.to_bytes(8, "little") + block[8:n])
            left -= n
            i += 1
    return [folder / n for n in ("dest_dir", "filename", "permissions", "app.bin")]


def op_apply(args: dict[str, Any]) -> dict[str, Any]:
    """`gapferry apply` (real CLI, a child) to a real device on loopback (sshd + mender 3.4,
    `gapferry.fixtures.device`) vs `scp -O` + `ssh mender install` + `ssh mender commit` of an
    artifact of the same size. Each run installs a new artifact name (signed, uncompressed)."""
    import shutil
    import subprocess

    from gapferry.fixtures.artifacts import mender_artifact_write
    from gapferry.fixtures.device import (
        DevicePlan,
        make_keys,
        make_transfer,
        running_device,
        ssh_entry,
        write_devices_file,
    )

    work = Path(args["work"])
    gapferry = str(args["gapferry"])
    (work / "keys").mkdir(parents=True)
    keys = make_keys(work / "keys")
    dest = work / "dev-files"
    dest.mkdir()
    seq = 0
    out: dict[str, Any] = {"base": [], "ours": [], "rss": []}

    def artifact(name: str, size: int) -> Path:
        files = _payload(work / f"{name}-payload", size, dest)
        art = mender_artifact_write(
            work / f"{name}.mender",
            name=name,
            payload_type="single-file",
            files=files,
            compression="none",
            key=keys.artifact,
        )
        shutil.rmtree(work / f"{name}-payload")
        return art

    with running_device(work, verify_key=keys.artifact.public) as dev:
        devices = write_devices_file(
            work / "devices.toml", {"dev-1": ssh_entry(dev)}, verify_key=keys.artifact.public
        )
        ssh = dev.ssh_base()
        scp = ["scp", "-O", "-q", *ssh[1:-1], "-P", str(dev.port)]
        scp = [a for i, a in enumerate(scp) if not (a == "-p" or (i > 0 and scp[i - 1] == "-p"))]

        def ours(size: int) -> dict[str, Any]:
            nonlocal seq
            seq += 1
            name = f"gf-{seq}"
            art = artifact(name, size)
            media = work / f"media-{seq}"
            make_transfer(
                media,
                keys,
                [
                    DevicePlan(
                        name="dev-1", artifact=art, artifact_name=name, current=dev.show_artifact()
                    )
                ],
                sequence=seq,
            )
            art.unlink()
            _drop_caches()
            r = _timed_child(
                [
                    gapferry,
                    "apply",
                    str(media),
                    "--trust",
                    str(keys.trust),
                    "--devices",
                    str(devices),
                    "--state",
                    str(work / f"applier-{seq}.db"),  # fresh: each run is a new bundle
                    "--sign",
                    str(keys.technician.private),
                    "--json",
                ],
                dict(os.environ),
            )
            doc = _json_doc(r.pop("stdout"))
            r["outcome"] = [d.get("outcome") for d in doc.get("devices", [])]
            if dev.show_artifact() != name:
                raise RuntimeError(f"apply did not install {name}: {doc}")
            shutil.rmtree(media)
            r["size"] = size
            return r

        def base(size: int) -> dict[str, Any]:
            nonlocal seq
            seq += 1
            name = f"base-{seq}"
            art = artifact(name, size)
            target = str(work / f"{name}.on-device.mender")  # the device sees the host's disk
            _drop_caches()
            t0 = time.perf_counter()
            subprocess.run([*scp, str(art), f"{dev.user}@{dev.host}:{target}"], check=True)
            t1 = time.perf_counter()
            for cmd in (f"mender --no-syslog install {target}", "mender --no-syslog commit"):
                subprocess.run(
                    [*ssh, cmd], check=True, capture_output=True, stdin=subprocess.DEVNULL
                )
            t2 = time.perf_counter()
            subprocess.run([*ssh, f"rm -f {target}"], check=True, stdin=subprocess.DEVNULL)
            art.unlink()
            if dev.show_artifact() != name:
                raise RuntimeError(f"mender install did not install {name}")
            return {"seconds": t2 - t0, "scp": t1 - t0, "install": t2 - t1, "size": size}

        for i in range(int(args["runs"])):
            # In turns (A B, B A, ...): cold reads on the benchmark's disk are fast and slow
            # by turns; one fixed order would hand one side all the slow ones (run.in_turns).
            if i % 2 == 0:
                out["base"].append(base(int(args["size"])))
            out["ours"].append(ours(int(args["size"])))
            if i % 2 == 1:
                out["base"].append(base(int(args["size"])))
        for size in args.get("rss_sizes", []):
            try:
                out["rss"].append(ours(int(size)))
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                out.setdefault("rss_errors", []).append(f"{size}: {e}"[-500:])
    return out


OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pack": op_pack,
    "fleet": op_fleet,
    "apply": op_apply,
}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in OPS:
        print(f"usage: {argv[0]} {{{','.join(OPS)}}} JSON", file=sys.stderr)
        return 2
    result = OPS[argv[1]](json.loads(argv[2]))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
