"""Every KMS case of the reference vectors, through the CLI and through the running proxy.

For each KMS config of `$EP_SHARED_DIR/vectors/k8s-transformers.json` a Python plugin
(kmsfake.FakePlugin) implements the vectors' recorded fake algorithm on a unix socket, and an
EncryptionConfiguration names it. Then every case of that config:

  * CLI: `etcd-encrypt-proxy decrypt --verbose` of the stored value: ok cases give the
    plaintext and the expected stale flag, error cases exit 1 with nothing on stdout;
  * proxy: the stored value is put straight into etcd at the case's key and read back through
    the proxy: ok cases come back decrypted, error cases come back unchanged (passed through,
    as kube-apiserver would report that one object).

Stale for KMS v2 compares the object with the current write state (spec 2.3). The proxy's
writer always uses seeds (HKDF, as kube-apiserver since 1.29); the `kdf: false` config's values
were written by a legacy-mode writer, so under our writer they read as stale (type differs).
"""

import base64
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import kmsfake  # noqa: E402

etcd3 = harness.import_etcd3()
suite = harness.Suite("kms vectors")
harness.require_binary(suite, "decrypt", "etcd-encrypt-proxy decrypt is available")

VECTORS = os.path.join(os.environ.get("EP_SHARED_DIR", "../shared"), "vectors",
                       "k8s-transformers.json")
with open(VECTORS) as f:
    vectors = json.load(f)
configs = {c["id"]: c for c in vectors["configs"]}
cases = [c for c in vectors["cases"] if c["provider"].startswith("kms")]
suite.check("the vectors hold 62 KMS cases", len(cases) == 62, len(cases))

work = harness.workdir("ep-kmsvec")
etcd = harness.Etcd(work).start()
suite.logs.append(etcd.log)
direct = etcd3.client("127.0.0.1", etcd.port, timeout=20)


def kms_of(cfg):
    return next(p["kms"] for p in cfg["providers"] if "kms" in p)


def b64(s):
    return base64.b64decode(s) if s else b""


def plugin_for(cfg_id):
    """Starts the fake plugin of config |cfg_id|: KEKs of every config with the same provider
    name are known by key_id, as a rotated plugin still decrypting its old key would."""
    kms = kms_of(configs[cfg_id])
    fake = kms["fake_plugin"]
    sock = os.path.join(work, cfg_id + ".sock")
    if kms["apiVersion"] == "v1":
        return kms, kmsfake.FakePlugin(sock, b64(fake["kek_b64"])).start()
    extra = {}
    for other in configs.values():
        for p in other["providers"]:
            ofake = p.get("kms", {}).get("fake_plugin", {})
            if p.get("kms", {}).get("name") == kms["name"] and ofake.get("key_id") in \
                    fake.get("also_decrypts_key_ids", []):
                extra[ofake["key_id"]] = b64(ofake["kek_b64"])
    annotations = {k: b64(v) for k, v in fake.get("annotations_b64", {}).items()}
    plugin = kmsfake.FakePlugin(sock, b64(fake["kek_b64"]), fake["key_id"], annotations, extra)
    return kms, plugin.start()


def config_file(cfg_id, kms, sock):
    path = os.path.join(work, cfg_id + ".yaml")
    lines = kmsfake.kms_provider_yaml(kms["name"], kms["apiVersion"], sock, kms.get("timeout", "3s"),
                                      kms.get("cachesize"))
    # the vectors ran the transformer directly: cover every resource their keys are under
    resources = sorted(set(configs[cfg_id]["resources"]) | {"secrets", "configmaps"})
    kmsfake.write_kms_config(path, [lines], resources, identity=False)
    return path


def expected_stale(case, kms):
    if kms["apiVersion"] == "v2" and not kms["fake_plugin"].get("kdf", True):
        return True  # legacy-mode writer's values, read under a seed-mode writer
    return bool(case.get("stale"))


def cli_decrypt(config, case):
    import subprocess

    res = subprocess.run([harness.binary(), "decrypt", "--encryption-provider-config", config,
                          "--key", case["etcd_key"], "--verbose"], input=b64(case["stored_b64"]),
                         capture_output=True, timeout=30)
    return res.returncode, res.stdout, res.stderr.decode(errors="replace")


def run_cli(cfg_id, config, kms, mine):
    for case in mine:
        rc, out, err = cli_decrypt(config, case)
        if case["expect"] == "ok":
            stale = "stale=%s" % ("true" if expected_stale(case, kms) else "false")
            suite.check("CLI %s" % case["id"],
                        rc == 0 and out == b64(case.get("plaintext_b64")) and stale in err,
                        "exit %d, %s" % (rc, err.strip()[-200:]))
        else:
            suite.check("CLI refuses %s" % case["id"], rc == 1 and out == b"",
                        "exit %d, %d bytes out" % (rc, len(out)))


def run_proxy(cfg_id, config, mine):
    proxy = harness.Proxy(work, [etcd.url], config)
    suite.logs.append(proxy.log)
    proxy.start()
    through = etcd3.client("127.0.0.1", proxy.port, timeout=20)
    try:
        for case in mine:
            stored = b64(case["stored_b64"])
            direct.put(case["etcd_key"], stored)
            got, _ = through.get(case["etcd_key"])
            got = got if got is not None else b""
            if case["expect"] == "ok":
                suite.check("proxy reads %s" % case["id"], got == b64(case.get("plaintext_b64")),
                            got[:40])
            else:
                suite.check("proxy passes %s through unchanged" % case["id"], got == stored,
                            got[:40])
        suite.check("proxy for %s still running" % cfg_id, proxy.alive())
    finally:
        through.close()
        proxy.stop()


def run_config(cfg_id):
    mine = [c for c in cases if c["config"] == cfg_id]
    kms, plugin = plugin_for(cfg_id)
    try:
        config = config_file(cfg_id, kms, plugin.socket_path)
        run_cli(cfg_id, config, kms, mine)
        run_proxy(cfg_id, config, mine)
    finally:
        plugin.stop()


for cfg_id in sorted({c["config"] for c in cases}):
    suite.run("config %s" % cfg_id, run_config, cfg_id)
suite.finish()
