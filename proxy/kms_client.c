/*
 * kms_client: the KMS plugins seen from one event loop (see the header for the contract).
 *
 * Layers: grpc_client carries unary calls over the plugin's unix socket; this file knows the
 * plugin APIs (proxy/kms_v1beta1.proto, proxy/kms_v2.proto), turns crypto_kms_calls into plugin
 * requests and answers back into crypto_kms_call_complete / _fail, and runs the v2 Status
 * poller.
 *
 * A kms_request (one kms_set_perform) owns an array of ops, one per crypto_kms_call. Every op is
 * started at once; an op of a v1 client whose connection has not passed Version yet waits on
 * that client's |version_wait| list behind a single Version call (per connection), keeping its
 * own deadline. Each op ends exactly once (done = true, |outstanding| decremented); the last one
 * activates the request's done event, so the caller's callback always runs from the loop.
 *
 * The poller (only on the set kms_set_start_pollers was called on) runs one cycle per v2
 * provider at a time: Status, then, when crypto_kms_provider_extend_v2_state says the state
 * cannot simply be extended, Encrypt of a fresh seed and crypto_kms_provider_set_v2_state. A
 * cycle ends in poll_ok (next in 60 s) or poll_failed (next in 10 s). The seed lives in a secret
 * only during its Encrypt call. Log lines name a key_id by "sha256:" and the first 16 hex digits
 * of its hash, never the bytes, and never print seeds or DEKs.
 *
 * Version is checked per connection: a call waits for it unless this connection already passed
 * it. A call that was on a connection the plugin dropped unnoticed is resent on the next one by
 * grpc_client's transparent retry and may precede that connection's Version; the apiserver
 * itself checks Version once per process, so plugins cannot rely on more.
 *
 * :authority is "localhost" for both APIs: v2 by spec 5.1; for v1 the spec leaves grpc-go's
 * derived value open (section 11) and recent grpc-go sends "localhost" for unix targets too;
 * plugins do not look at it.
 */
#include "proxy/kms_client.h"

#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <protobuf-c/protobuf-c.h>

#include "common/alloc.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/secret.h"
#include "crypto/random.h"
#include "net/grpc.h"
#include "net/grpc_client.h"
#include "net/kms_v1beta1.pb-c.h"
#include "net/kms_v2.pb-c.h"
#include "proxy/kms_client_internal.h"
#include "proxy/metrics.h"

_Atomic uint64_t kmsc_seed_encrypt_calls;

uint64_t kms_set_encrypt_calls(void) {
    return atomic_load(&kmsc_seed_encrypt_calls);
}

/* ---- small helpers ---- */

const char *kmsc_client_name(const kms_client *c) {
    return crypto_kms_provider_name(c->provider);
}

/* One line per event: "kms provider "NAME": " and |fmt| with |a| and |b|. */
void kmsc_log(const kms_client *c, const char *fmt, const char *a, const char *b) {
    char what[EP_ERR_MSG_MAX];
    snprintf(what, sizeof(what), fmt, a, b);
    ep_log(strstr(fmt, "unhealthy") ? EP_LOG_WARN : EP_LOG_INFO, "kms provider \"%s\": %s",
           kmsc_client_name(c), what);
}

/* "sha256:" and the first 16 hex digits of SHA-256(|key_id|), as in the apiserver's metrics. */
void kmsc_hash_key_id(str key_id, char out[KEY_ID_HASH_LEN]) {
    unsigned char md[32];
    unsigned int mdlen = 0;
    strcpy(out, "sha256:");
    if (!EVP_Digest(key_id.ptr, key_id.len, md, &mdlen, EVP_sha256(), NULL)) {
        strcpy(out + 7, "?");
        return;
    }
    for (int i = 0; i < 8; i++) {
        snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
    }
}

/* A random UUIDv4 string (the uid of v2 calls). Returns 0 or EP_ERR_PROVIDER. */
int kmsc_make_uid(char out[37]) {
    uint8_t b[16];
    if (crypto_random_bytes(b, sizeof(b)) != 0) {
        return EP_ERR_PROVIDER;
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return 0;
}

ProtobufCBinaryData kmsc_pb_bytes(str s) {
    ProtobufCBinaryData d = {s.len, (uint8_t *)s.ptr};
    return d;
}

str kmsc_bytes_str(ProtobufCBinaryData d) {
    return str_make(d.data, d.len);
}

/* Packs |msg| and starts |method| of |c|'s API with |timeout_ns|. The packed copy is wiped.
 * Returns 0 or EP_ERR_NOMEM (message in |err|). */
int kmsc_start_call(kms_client *c, const char *method, const ProtobufCMessage *msg,
                    uint64_t timeout_ns, grpc_call_cb cb, void *arg, grpc_call **out, ep_err *err) {
    char path[64];
    snprintf(path, sizeof(path), "/%s.KeyManagementService/%s", c->api == 1 ? "v1beta1" : "v2",
             method);
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *packed = ep_malloc(len ? len : 1);
    if (!packed) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory packing a plugin request");
    }
    protobuf_c_message_pack(msg, packed);
    int rv = grpc_call_start(c->ch, path, str_make(packed, len), timeout_ns, cb, arg, out, err);
    explicit_bzero(packed, len);
    ep_free(packed);
    return rv;
}

void kmsc_observe(const kms_client *c, const char *method, int status_code, uint64_t started_ns) {
    if (c->set->metrics == NULL || c->api != 2) {
        return;
    }
    char path[64];
    snprintf(path, sizeof(path), "/v2.KeyManagementService/%s", method);
    str labels[] = {str_cstr(kmsc_client_name(c)), str_cstr(path),
                    str_cstr(grpc_status_go_name(status_code))};
    ep_metrics_observe(c->set->metrics, PM_KMS_LATENCY, labels,
                       proxy_metrics_now_ns() - started_ns);
}

void kms_set_observe(kms_set *s, ep_metrics_shard *metrics) {
    s->metrics = metrics;
}

/* ---- the set ---- */

/* Sets up |c| for |p|. Returns 0, EP_ERR_CONFIG or EP_ERR_NOMEM (message in |err|). */
static int client_init(kms_set *s, kms_client *c, crypto_kms_provider *p, ep_err *err) {
    char log_name[300];
    c->set = s;
    c->provider = p;
    c->api = crypto_kms_provider_api_version(p);
    c->timeout_ns = crypto_kms_provider_timeout_ns(p);
    TAILQ_INIT(&c->version_wait);
    snprintf(log_name, sizeof(log_name), "kms plugin \"%s\"", crypto_kms_provider_name(p));
    grpc_channel_config cfg = {
        .socket_path = crypto_kms_provider_socket_path(p),
        .authority = "localhost",
        .log_name = log_name,
    };
    int rv = grpc_channel_new(s->base, &cfg, &c->ch, err);
    if (rv != 0) {
        return ep_err_wrap(err, rv, "kms provider \"%s\"", crypto_kms_provider_name(p));
    }
    c->poll_ev = evtimer_new(s->base, kmsc_on_poll, c);
    if (!c->poll_ev) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    return 0;
}

static void client_free(kms_client *c) {
    grpc_channel_free(c->ch); /* drops every call without callbacks */
    if (c->poll_ev) {
        event_free(c->poll_ev);
    }
    ep_free(c->status_version);
    buf_free(&c->status_key_id);
    secret_free(&c->seed);
}

int kms_set_new_providers(struct event_base *base, crypto_kms_provider *const *providers, size_t n,
                          kms_set **out, ep_err *err) {
    kms_set *s = ep_calloc(1, sizeof(*s));
    if (!s) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    s->base = base;
    TAILQ_INIT(&s->requests);
    s->ok_interval_ns = DEFAULT_OK_INTERVAL_NS;
    s->retry_interval_ns = DEFAULT_RETRY_INTERVAL_NS;
    s->validity_ns = DEFAULT_VALIDITY_NS;
    s->clients = ep_calloc(n ? n : 1, sizeof(kms_client));
    if (!s->clients) {
        kms_set_free(s);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        s->nclients++;
        int rv = client_init(s, &s->clients[i], providers[i], err);
        if (rv != 0) {
            kms_set_free(s);
            return rv;
        }
    }
    *out = s;
    return 0;
}

int kms_set_new(struct event_base *base, const crypto_transformer_set *transformers, kms_set **out,
                ep_err *err) {
    size_t n = 0;
    crypto_kms_provider *const *providers = crypto_transformer_set_kms_providers(transformers, &n);
    return kms_set_new_providers(base, providers, n, out, err);
}

void kms_set_free(kms_set *s) {
    if (!s) {
        return;
    }
    kms_request *req;
    while ((req = TAILQ_FIRST(&s->requests)) != NULL) {
        kms_request_cancel(req);
    }
    for (size_t i = 0; i < s->nclients; i++) {
        client_free(&s->clients[i]);
    }
    if (s->primed_ev) {
        event_free(s->primed_ev);
    }
    ep_free(s->clients);
    ep_free(s);
}

/* ---- describe ---- */

static void describe_client(const kms_client *c, FILE *f) {
    fprintf(f, "kms provider \"%s\": api v%d, plugin %s: ", kmsc_client_name(c), c->api,
            crypto_kms_provider_socket_path(c->provider));
    if (c->health == 0) {
        fprintf(f, "%s", c->api == 2 && !c->set->polling ? "not polled here" : "not contacted yet");
    } else if (c->health < 0) {
        fprintf(f, "unhealthy: %s", c->last_error);
    } else {
        fprintf(f, "healthy");
    }
    if (c->api == 2 && c->key_id_hash[0]) {
        int64_t left = c->state_until_ms - ep_clock_ms();
        fprintf(f, ", key_id %s, ", c->key_id_hash);
        if (left > 0) {
            fprintf(f, "write state valid for %llds", (long long)(left / 1000));
        } else {
            fprintf(f, "write state expired");
        }
    }
    fputc('\n', f);
}

size_t kms_set_count(const kms_set *s) {
    return s->nclients;
}

int kms_set_health(const kms_set *s, size_t i, const char **name, int *api) {
    *name = kmsc_client_name(&s->clients[i]);
    *api = s->clients[i].api;
    return s->clients[i].health;
}

void kms_set_describe(const kms_set *s, FILE *f) {
    for (size_t i = 0; i < s->nclients; i++) {
        describe_client(&s->clients[i], f);
    }
}
