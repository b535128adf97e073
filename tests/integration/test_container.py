"""The container images and the static-pod manifest, end to end with podman.

1. scripts/container-setup.sh writes $EP_BUILD_DIR/containers/containers.conf (runc, cgroupfs,
   ulimits; /etc/containers is never touched) and makes docker.io/library/debian:bookworm-slim
   with mmdebstrap when podman has none (kept as a tarball there; ~40 s cold).
2. `podman build --pull=never` of docker/Dockerfile from this source tree: targets `proxy` and
   `kms-plugin` (the second reuses the builder stage).
3. A real etcd on loopback (TLS, client certificates; harness.Etcd) and the proxy container run
   with --network host exactly as the `etcd-encrypt-proxy` container of docker/etcd-sidecar.yaml
   says: its command, args, volume mounts (the hostPaths replaced by this test's directories,
   the certificates named as kubeadm names them), securityContext and limits. Only the ports
   2378/2379/2382 in the args are swapped for free ones.
4. etcdctl put/get through the container; the value in etcd is k8s:enc:aesgcm:v1:...; the
   probes of the manifest (and /metrics) answer 200 on the metrics port; SIGTERM exits 0.
   Until `serve --help` lists --listen-metrics-urls (the admin endpoint is being added), that
   flag is dropped from the args and the probe checks are reported as SKIP; once the flag
   exists they are strict.
5. The KMS plugin image: --help, then the container of docker/kms-plugin.yaml with its args and
   volumes serves its socket in the shared directory and removes it on SIGTERM.

podman missing or not working is a failure, never a skip. Every container is removed by id in
`finally` (and on SIGTERM/SIGINT/SIGHUP); containers carry a label with this process's PID and
--timeout, so leftovers of a SIGKILLed run are removed by the next one.
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SRC = os.environ.get("EP_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("EP_BUILD_DIR") or os.path.join(SRC, "build")
CONTAINERS_DIR = os.path.join(BUILD, "containers")
PROXY_TAG = "localhost/etcd-encrypt-proxy:it"
PLUGIN_TAG = "localhost/etcd-encrypt-kms-plugin:it"
LABEL = "io.etcd-encrypt-proxy.test"
LABEL_VALUE = "test_container:%d" % os.getpid()
RUN_TIMEOUT_S = 600  # podman run --timeout: a container outlives a killed test by this much at most

suite = harness.Suite("container")
env = dict(os.environ)
containers = []  # ids of containers we started, removed in rm_containers()
timings = {}


# ---------------------------------------------------------------------------------------------
# podman


def podman(*args, timeout=120, check=False):
    res = subprocess.run(["podman"] + list(args), capture_output=True, env=env, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError("podman %s failed (exit %d): %s" % (
            " ".join(args[:3]), res.returncode, res.stderr.decode(errors="replace")[-2000:]))
    return res


def rm_containers():
    for cid in list(containers):
        try:
            log = os.path.join(work, "container-%s.log" % cid[:12])
            with open(log, "w") as f:
                f.write(logs(cid))
            suite.logs.append(log)  # printed by suite.finish() when a check failed
            podman("rm", "--force", "--time", "0", cid, timeout=60)
        except Exception as e:  # noqa: BLE001 - go on removing the others
            print("could not remove container %s: %s" % (cid, e))
        containers.remove(cid)


def _on_signal(signum, frame):
    rm_containers()
    harness._on_signal(signum, frame)


for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


def remove_leftovers():
    """Containers of an earlier run of this test whose process is gone (SIGKILLed by ctest)."""
    res = podman("ps", "--all", "--filter", "label=" + LABEL, "--format",
                 '{{.ID}} {{index .Labels "%s"}}' % LABEL)
    for line in res.stdout.decode().splitlines():
        cid, _, value = line.partition(" ")
        m = re.fullmatch(r"test_container:(\d+)", value.strip())
        if m and not os.path.exists("/proc/%s" % m.group(1)):
            print("removing container %s left by test run %s" % (cid, m.group(1)))
            podman("rm", "--force", "--time", "0", cid, timeout=60)


def run_detached(args):
    """podman run -d ...; the id is tracked for removal before anything else can fail."""
    cidfile = os.path.join(work, "cid-%d" % len(os.listdir(work)))
    res = podman("run", "--detach", "--cidfile", cidfile, "--label", "%s=%s" % (LABEL, LABEL_VALUE),
                 "--timeout", str(RUN_TIMEOUT_S), *args, timeout=120)
    if os.path.exists(cidfile):
        with open(cidfile) as f:
            cid = f.read().strip()
        if cid:
            containers.append(cid)
    if res.returncode != 0:
        raise RuntimeError("podman run failed: " + res.stderr.decode(errors="replace")[-2000:])
    return containers[-1]


def state(cid):
    res = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", cid, check=True)
    status, code = res.stdout.decode().split()
    return status, int(code)


def logs(cid):
    res = podman("logs", cid)
    return (res.stdout + res.stderr).decode(errors="replace")


def stop_container(cid, grace):
    podman("stop", "--time", str(grace), cid, timeout=grace + 60)
    return state(cid)


# ---------------------------------------------------------------------------------------------
# the manifests


def load_yaml(name):
    import yaml

    with open(os.path.join(SRC, "docker", name)) as f:
        return yaml.safe_load(f)


def container_of(pod, name):
    for c in pod["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise RuntimeError("no container %r in the manifest" % name)


def quantity_bytes(q):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1000, "M": 1000**2, "G": 1000**3}
    m = re.fullmatch(r"(\d+)([KMG]i?)?", str(q))
    if not m:
        raise ValueError("memory quantity %r" % q)
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


def quantity_cpus(q):
    q = str(q)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def run_options(pod, c, host_dirs):
    """podman run options for manifest container |c|: volumes (hostPath -> our directory),
    securityContext, limits, host network."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    opts = ["--network", "host"]
    for m in c.get("volumeMounts", []):
        hp = volumes[m["name"]]["hostPath"]["path"]
        if hp not in host_dirs:
            raise RuntimeError("manifest mounts hostPath %s, which this test does not provide"
                               % hp)
        opts += ["--volume", "%s:%s%s" % (host_dirs[hp], m["mountPath"],
                                          ":ro" if m.get("readOnly") else "")]
    sc = c.get("securityContext", {})
    if "runAsUser" in sc:
        opts += ["--user", "%d:%d" % (sc["runAsUser"], sc.get("runAsGroup", sc["runAsUser"]))]
    if "ALL" in sc.get("capabilities", {}).get("drop", []):
        opts += ["--cap-drop", "all"]
    if sc.get("readOnlyRootFilesystem"):
        opts += ["--read-only"]
    if sc.get("allowPrivilegeEscalation") is False:
        opts += ["--security-opt", "no-new-privileges"]
    limits = c.get("resources", {}).get("limits", {})
    if "memory" in limits:
        opts += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        opts += ["--cpus", str(quantity_cpus(limits["cpu"]))]
    if not pod["spec"].get("hostNetwork"):
        raise RuntimeError("the manifest's pod does not use the host network")
    return opts


def swap_ports(args, ports):
    """Every 127.0.0.1:PORT / localhost:PORT in |args| with ports[PORT]; an unknown one fails."""
    def sub(m):
        port = int(m.group(2))
        if port not in ports:
            raise RuntimeError("manifest arg uses port %d, which this test does not map" % port)
        return "%s:%d" % (m.group(1), ports[port])
    return [re.sub(r"(127\.0\.0\.1|localhost):(\d+)", sub, a) for a in args]


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return None, str(e).encode()


# ---------------------------------------------------------------------------------------------
# the checks


def setup_podman():
    t0 = time.monotonic()
    res = subprocess.run(["bash", os.path.join(SRC, "scripts", "container-setup.sh"),
                          CONTAINERS_DIR], capture_output=True, env=env, timeout=480)
    timings["base image (setup)"] = time.monotonic() - t0
    out = (res.stdout + res.stderr).decode(errors="replace")
    if not suite.check("scripts/container-setup.sh: containers.conf and the base image",
                       res.returncode == 0, out[-2000:]):
        return False
    sys.stdout.write(res.stderr.decode(errors="replace"))
    env["CONTAINERS_CONF"] = os.path.join(CONTAINERS_DIR, "containers.conf")
    res = podman("run", "--rm", "--network", "none", "docker.io/library/debian:bookworm-slim",
                 "true", timeout=120)
    return suite.check("podman runs a container (runc, cgroupfs)", res.returncode == 0,
                       res.stderr.decode(errors="replace")[-2000:])


def build(target, tag):
    log = os.path.join(work, "build-%s.log" % target)
    iid = os.path.join(work, "iid-%s" % target)
    suite.logs.append(log)
    t0 = time.monotonic()
    with open(log, "wb") as f:
        res = subprocess.run(
            ["podman", "build", "--pull=never", "--file", os.path.join(SRC, "docker", "Dockerfile"),
             "--ignorefile", os.path.join(SRC, "docker", ".dockerignore"), "--target", target,
             "--build-arg", "BUILD_JOBS=2", "--iidfile", iid, "--tag", tag, SRC],
            stdout=f, stderr=subprocess.STDOUT, env=env, timeout=540)
    timings["build " + target] = time.monotonic() - t0
    ok = suite.check("podman build --target %s (%.0f s)" % (target, timings["build " + target]),
                     res.returncode == 0, harness.log_tail(log, 30))
    if not ok:
        raise RuntimeError("image %s did not build" % target)
    with open(iid) as f:
        return f.read().strip()


def check_image(image, binary):
    res = podman("image", "inspect", "--format", "{{.Size}} {{.Config.User}}", image, check=True)
    size, user = res.stdout.decode().split()
    timings["image size MB " + binary] = int(size) / 1e6
    print("image %s: %.1f MB, user %s" % (binary, int(size) / 1e6, user))
    suite.check("%s image runs as a non-root user" % binary, user not in ("", "0", "root", "0:0"),
                user)
    suite.check("%s image is under 150 MB (%.0f MB)" % (binary, int(size) / 1e6),
                int(size) < 150e6)
    res = podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image, "-c",
                 "command -v cc gcc cmake; ldd /usr/local/bin/%s | grep 'not found'; true" % binary)
    suite.check("%s image: no toolchain, every library found" % binary,
                res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr)


def manifest_static_checks(pod, c):
    suite.check("etcd-sidecar.yaml: a kube-system Pod on the host network",
                pod["kind"] == "Pod" and pod["metadata"]["namespace"] == "kube-system"
                and pod["spec"].get("hostNetwork") is True)
    etcd_c = container_of(pod, "etcd")
    suite.check("etcd-sidecar.yaml: etcd from registry.k8s.io/etcd",
                etcd_c["image"].startswith("registry.k8s.io/etcd:"), etcd_c["image"])
    listen = [a for a in etcd_c["command"] if a.startswith("--listen-client-urls=")]
    suite.check("etcd-sidecar.yaml: etcd listens where the proxy connects",
                listen and "https://127.0.0.1:2379" in listen[0].split("=", 1)[1].split(","),
                listen)
    args = c["args"]
    suite.check("etcd-sidecar.yaml: proxy serves 127.0.0.1:2378, reaches https://127.0.0.1:2379",
                "--listen-addr=127.0.0.1:2378" in args
                and "--endpoints=https://127.0.0.1:2379" in args, args)
    for probe in ("livenessProbe", "readinessProbe"):
        g = c.get(probe, {}).get("httpGet", {})
        suite.check("etcd-sidecar.yaml: proxy %s is httpGet on 127.0.0.1:2382" % probe,
                    g.get("host") == "127.0.0.1" and g.get("port") == 2382 and g.get("path"), g)
    r = c.get("resources", {})
    suite.check("etcd-sidecar.yaml: proxy has resource requests and limits",
                r.get("requests") and r.get("limits"), r)


def proxy_container(image):
    pod = load_yaml("etcd-sidecar.yaml")
    c = container_of(pod, "etcd-encrypt-proxy")
    manifest_static_checks(pod, c)

    # kubeadm's file names, made by this test's CA
    tls = harness.make_tls(os.path.join(work, "pki"))
    shutil.copy(tls.client_cert, os.path.join(tls.dir, "healthcheck-client.crt"))
    shutil.copy(tls.client_key, os.path.join(tls.dir, "healthcheck-client.key"))
    enc_dir = os.path.join(work, "enc")
    os.makedirs(enc_dir)
    key = harness.write_encryption_config(os.path.join(enc_dir, "encryption-config.yaml"))
    kms_dir = os.path.join(work, "kms")
    os.makedirs(kms_dir)

    etcd = harness.Etcd(work, tls=tls, client_cert_auth=True)
    suite.logs.append(etcd.log)
    etcd.start()

    help_res = podman("run", "--rm", "--network", "none", image, "serve", "--help", check=True)
    has_metrics = b"--listen-metrics-urls" in help_res.stdout + help_res.stderr

    port, metrics_port = harness.free_port(), harness.free_port()
    args = swap_ports(c["args"], {2378: port, 2379: etcd.port, 2382: metrics_port})
    if not has_metrics:
        print("SKIP  probes: this build's `serve --help` does not list --listen-metrics-urls yet"
              " (the admin endpoint is being added); the flag is left out of the manifest's"
              " args and the probe checks become strict once it exists")
        args = [a for a in args if not a.startswith("--listen-metrics-urls")]
    opts = run_options(pod, c, {"/etc/kubernetes/pki/etcd": tls.dir,
                                "/etc/kubernetes/enc": enc_dir, "/var/run/kmsplugin": kms_dir})
    print("podman run %s --entrypoint %s %s %s" % (" ".join(opts), c["command"][0], image[:12],
                                                   " ".join(args)))
    cid = run_detached(opts + ["--entrypoint", c["command"][0], image] + c["command"][1:] + args)

    def up():
        return state(cid)[0] != "running" or harness.tcp_accepts(port)

    harness.wait_for(up, 20, 0.2)
    st = state(cid)
    if not suite.check("proxy container is running and accepts on the manifest's listen-addr",
                       st[0] == "running" and harness.tcp_accepts(port),
                       "%s\n%s" % (st, logs(cid))):
        return

    url = "https://127.0.0.1:%d" % port
    k, v = "/registry/secrets/default/container-s1", harness.marker()
    res = harness.etcdctl(url, "put", k, v, tls=tls)
    suite.check("etcdctl put through the container (mTLS)", res.returncode == 0, res.stderr)
    res = harness.etcdctl(url, "get", k, "--print-value-only", tls=tls)
    suite.check("etcdctl get through the container returns the plaintext",
                res.stdout.rstrip(b"\n") == v.encode(), res.stdout + res.stderr)
    raw = etcd.ctl("get", k, "-w", "json", check=True)
    kvs = json.loads(raw.stdout).get("kvs") or []
    stored = base64.b64decode(kvs[0]["value"]) if kvs else b""
    suite.check("the value in etcd starts with k8s:enc:aesgcm:v1:",
                stored.startswith(harness.AESGCM_PREFIX), stored[:40])
    try:
        opened = harness.aesgcm_open(key, k, stored)
    except Exception as e:  # noqa: BLE001
        opened = e
    suite.check("the stored value opens with the config's key (AAD = etcd key)",
                opened == v.encode(), opened)
    k2, v2 = "/registry/pods/default/container-p1", harness.marker()
    harness.etcdctl(url, "put", k2, v2, tls=tls, check=True)
    raw = etcd.ctl("get", k2, "--print-value-only", check=True)
    suite.check("a resource the config does not name stays plaintext in etcd",
                raw.stdout.rstrip(b"\n") == v2.encode(), raw.stdout)
    res = harness.etcdctl(url, "get", k, "--command-timeout=3s", tls=tls, client_cert=False,
                          timeout=30)
    suite.check("a client without a certificate is refused (--client-cert-auth)",
                res.returncode != 0, res.stdout)

    if has_metrics:
        for probe in ("livenessProbe", "readinessProbe"):
            g = c[probe]["httpGet"]
            probe_url = "%s://%s:%d%s" % (g.get("scheme", "HTTP").lower(), g["host"],
                                          metrics_port, g["path"])
            status, body = http_get(probe_url)
            suite.check("%s GET %s answers 200" % (probe, g["path"]), status == 200,
                        "%s %r" % (status, body[:200]))
        status, body = http_get("http://127.0.0.1:%d/metrics" % metrics_port)
        suite.check("GET /metrics on the metrics port answers 200", status == 200,
                    "%s %r" % (status, body[:200]))

    out = logs(cid)
    suite.check("the container's log has no plaintext value", v not in out and v2 not in out)
    st = stop_container(cid, 15)
    suite.check("SIGTERM (podman stop): the proxy exits 0", st == ("exited", 0),
                "%s\n%s" % (st, logs(cid)[-2000:]))


def kms_plugin_container(image):
    res = podman("run", "--rm", "--network", "none", image, "--help")
    out = (res.stdout + res.stderr).decode(errors="replace")
    suite.check("kms-plugin image: --help exits 0 with the usage", res.returncode == 0
                and "Usage: etcd-encrypt-kms-plugin" in out, out[-1000:])

    pod = load_yaml("kms-plugin.yaml")
    c = container_of(pod, "kms-plugin")
    sock_dir, kek_dir = os.path.join(work, "kms-sock"), os.path.join(work, "kms-kek")
    os.makedirs(sock_dir)
    os.makedirs(kek_dir)
    kek = os.path.join(kek_dir, "kek.bin")
    with open(kek, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(kek, 0o600)
    listen = [a for a in c["args"] if a.startswith("--listen=unix://")]
    if not suite.check("kms-plugin.yaml: --listen=unix:///var/run/kmsplugin/...",
                       listen and listen[0].startswith("--listen=unix:///var/run/kmsplugin/"),
                       c["args"]):
        return
    sock = os.path.join(sock_dir, os.path.basename(listen[0]))
    opts = run_options(pod, c, {"/var/run/kmsplugin": sock_dir, "/etc/kubernetes/kms": kek_dir})
    cid = run_detached(opts + ["--entrypoint", c["command"][0], image] + c["command"][1:]
                       + c["args"])
    harness.wait_for(lambda: os.path.exists(sock) or state(cid)[0] != "running", 15, 0.2)
    suite.check("kms-plugin container (as in kms-plugin.yaml) serves its socket in the shared"
                " hostPath", os.path.exists(sock) and state(cid)[0] == "running", logs(cid))
    st = stop_container(cid, 10)
    suite.check("kms-plugin container: SIGTERM exits 0 and removes the socket",
                st == ("exited", 0) and not os.path.exists(sock), "%s\n%s" % (st, logs(cid)))


def main():
    if not shutil.which("podman"):
        suite.check("podman is installed", False,
                    "apt-get install podman buildah mmdebstrap runc (scripts/deps.sh lists them)")
        return
    if not setup_podman():
        return
    remove_leftovers()
    proxy_image = build("proxy", PROXY_TAG)
    plugin_image = build("kms-plugin", PLUGIN_TAG)
    suite.run("proxy image", check_image, proxy_image, "etcd-encrypt-proxy")
    suite.run("kms-plugin image", check_image, plugin_image, "etcd-encrypt-kms-plugin")
    t0 = time.monotonic()
    suite.run("proxy container as in docker/etcd-sidecar.yaml", proxy_container, proxy_image)
    suite.run("KMS plugin container as in docker/kms-plugin.yaml", kms_plugin_container,
              plugin_image)
    timings["run"] = time.monotonic() - t0


work = harness.workdir("ep-container")
try:
    main()
except Exception as e:  # noqa: BLE001 - any error is a test failure
    import traceback

    traceback.print_exc()
    suite.check("container test ran to the end", False, "%s: %s" % (type(e).__name__, e))
finally:
    rm_containers()
    print("timings: " + ", ".join("%s %.1f" % kv for kv in timings.items()))
suite.finish()
