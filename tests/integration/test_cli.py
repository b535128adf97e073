#!/usr/bin/python3
"""The offline CLI (check-config, encrypt, decrypt) driven as an operator would, against the
reference vectors produced by Kubernetes' own transformer code.

Every non-KMS vector case is replayed through `etcd-encrypt-proxy decrypt` with a config file
written from the vector's config entry (as JSON, which the loader accepts like the apiserver),
and every config gets a fresh encrypt -> decrypt round trip. Exit status 0 only when every
check passed; the last line is "N passed, N failed".
"""
import base64
import json
import os
import subprocess
import sys
import tempfile

BINARY = os.environ.get("EP_BINARY") or os.path.join(
    os.environ.get("EP_BUILD_DIR", "build"), "etcd-encrypt-proxy")
SHARED = os.environ.get("EP_SHARED_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared")
VECTORS = os.path.join(SHARED, "vectors", "k8s-transformers.json")

passed = 0
failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what, flush=True)


def run(args, stdin=b""):
    p = subprocess.run([BINARY] + args, input=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


def write_config(tmp, cfg):
    path = os.path.join(tmp, cfg["id"] + ".json")
    if not os.path.exists(path):
        providers = []
        for p in cfg["providers"]:
            (ptype, body), = p.items()
            body = {k: v for k, v in body.items() if k != "fake_plugin"}
            providers.append({ptype: body})
        # The Go vectors applied each chain to keys of both resources they use; the proxy picks
        # chains by key, so the file must name both for the same chain to apply.
        resources = list(dict.fromkeys(cfg["resources"] + ["secrets", "configmaps"]))
        doc = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
               "resources": [{"resources": resources, "providers": providers}]}
        with open(path, "w") as f:
            json.dump(doc, f, indent=2)
    return path


def is_kms(cfg):
    return any("kms" in p for p in cfg["providers"])


def replay_vectors(tmp):
    data = json.load(open(VECTORS))
    configs = {c["id"]: c for c in data["configs"]}
    ran = 0
    for case in data["cases"]:
        if case["provider"].startswith("kms"):
            continue
        ran += 1
        path = write_config(tmp, configs[case["config"]])
        stored = base64.b64decode(case["stored_b64"])
        rc, out, err = run(["decrypt", "--encryption-provider-config", path,
                            "--key", case["etcd_key"], "--verbose"], stored)
        if case["expect"] == "ok":
            want = base64.b64decode(case["plaintext_b64"])
            check(rc == 0 and out == want, f"{case['id']}: rc={rc} {err.strip()}")
            stale = "stale=true" in err
            check(stale == case["stale"], f"{case['id']}: stale {stale} want {case['stale']}")
        else:
            check(rc == 1 and out == b"" and err.strip() != "",
                  f"{case['id']}: want error like {case['go_error']!r}, rc={rc}")
            if rc == 1:
                print(f"ok {case['id']}: {err.strip()}  (go: {case['go_error']})")
    check(ran == 68, f"ran {ran} non-KMS vector cases, want 68")
    for cfg in configs.values():
        if is_kms(cfg):
            continue
        path = write_config(tmp, cfg)
        key = "/registry/secrets/ns/roundtrip"
        plain = os.urandom(3000)
        rc, stored, err = run(["encrypt", "--encryption-provider-config", path, "--key", key],
                              plain)
        check(rc == 0, f"{cfg['id']}: encrypt failed: {err}")
        rc, back, err = run(["decrypt", "--encryption-provider-config", path, "--key", key],
                            stored)
        check(rc == 0 and back == plain, f"{cfg['id']}: round trip failed: {err}")


def aesgcm_config(tmp, name="enc.yaml", resources="[secrets]"):
    path = os.path.join(tmp, name)
    secret = base64.b64encode(os.urandom(32)).decode()
    with open(path, "w") as f:
        f.write(f"""apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: {resources}
    providers:
      - aesgcm:
          keys:
            - name: key1
              secret: {secret}
      - identity: {{}}
""")
    return path, secret


def operator_checks(tmp):
    path, secret = aesgcm_config(tmp)
    rc, out, err = run(["check-config", "--encryption-provider-config", path])
    table = out.decode()
    check(rc == 0 and "/registry/secrets/" in table and "aesgcm" in table,
          f"check-config table: rc={rc} {table!r} {err}")
    check(secret not in table and secret not in err, "check-config printed a secret")

    bad = os.path.join(tmp, "bad.yaml")
    with open(bad, "w") as f:
        f.write("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
                "resources:\n  - resources: [secrets]\n    providers:\n"
                "      - aesgcm:\n          keys:\n            - name: k\n"
                "              secret: c2hvcnQ=\n")
    rc, out, err = run(["check-config", "--encryption-provider-config", bad])
    check(rc == 1 and err.startswith(bad + ":9:"), f"bad key size located: rc={rc} {err!r}")
    check("c2hvcnQ=" not in err, "error message printed the secret")

    typo = os.path.join(tmp, "typo.yaml")
    with open(typo, "w") as f:
        f.write("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
                "resources:\n  - resources: [secrets]\n    provider:\n      - identity: {}\n")
    rc, out, err = run(["check-config", "--encryption-provider-config", typo])
    check(rc == 1 and err.startswith(typo + ":5:"), f"unknown field located: {err!r}")

    rc, out, err = run(["check-config", "--encryption-provider-config", os.path.join(tmp, "no")])
    check(rc == 1 and err.strip() != "", "missing file refused")

    key = "/registry/secrets/default/db-pass"
    rc, stored, err = run(["encrypt", "--encryption-provider-config", path, "--key", key], b"pw")
    check(rc == 0 and stored.startswith(b"k8s:enc:aesgcm:v1:key1:"), f"encrypt prefix: {stored!r}")
    check(len(stored) == len(b"k8s:enc:aesgcm:v1:key1:") + 12 + 2 + 16, "aesgcm stored length")

    rc, out, err = run(["decrypt", "--encryption-provider-config", path, "--key", key,
                        "--verbose"], stored)
    check(rc == 0 and out == b"pw" and "aesgcm" in err and "key1" in err
          and "stale=false" in err, f"decrypt verbose: {out!r} {err!r}")

    moved = "/registry/secrets/default/elsewhere"
    rc, out, err = run(["decrypt", "--encryption-provider-config", path, "--key", moved], stored)
    check(rc == 1 and out == b"" and "authentication" in err, f"moved value refused: {err!r}")

    tampered = stored[:-1] + bytes([stored[-1] ^ 1])
    rc, out, err = run(["decrypt", "--encryption-provider-config", path, "--key", key], tampered)
    check(rc == 1 and out == b"", f"tampered value refused: {err!r}")

    rc, out, err = run(["decrypt", "--encryption-provider-config", path, "--key", key],
                       stored[:30])
    check(rc == 1 and out == b"", f"truncated value refused: {err!r}")

    other, _ = aesgcm_config(tmp, "other.yaml")
    rc, out, err = run(["decrypt", "--encryption-provider-config", other, "--key", key], stored)
    check(rc == 1 and out == b"", f"wrong key refused: {err!r}")

    # Outside the encrypted prefix: written and read as plaintext.
    rc, out, err = run(["encrypt", "--encryption-provider-config", path,
                        "--key", "/registry/pods/default/p"], b"plain")
    check(rc == 0 and out == b"plain", "unencrypted resource stays plaintext")
    rc, out, err = run(["decrypt", "--encryption-provider-config", path,
                        "--key", "/registry/pods/default/p"], stored)
    check(rc == 1, "encrypted bytes under a plaintext resource are refused")

    # Identity allowed in the chain: plaintext reads, marked stale.
    rc, out, err = run(["decrypt", "--encryption-provider-config", path, "--key", key,
                        "--verbose"], b"legacy plaintext")
    check(rc == 0 and out == b"legacy plaintext" and "stale=true" in err,
          f"plaintext read through identity is stale: {err!r}")

    for cmd in ("check-config", "encrypt", "decrypt"):
        rc, out, err = run([cmd, "--help"])
        check(rc == 0 and b"--encryption-provider-config" in out, f"{cmd} --help")
    rc, out, err = run(["encrypt", "--encryption-provider-config", path])
    check(rc == 2 and "--key" in err, "missing --key is a usage error")
    rc, out, err = run(["frobnicate"])
    check(rc == 2 and "unknown command" in err, "unknown command")


def main():
    if not os.access(BINARY, os.X_OK):
        print(f"FAIL: binary {BINARY} is missing")
        print("0 passed, 1 failed")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        replay_vectors(tmp)
        operator_checks(tmp)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
