/*
 * kms_poller: the v2 Status poller (see kms_client.c for the whole client): Status, and when
 * the state cannot simply be extended, Encrypt of a fresh seed and a new write state.
 */
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <protobuf-c/protobuf-c.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/pb_alloc.h"
#include "common/secret.h"
#include "crypto/random.h"
#include "net/grpc.h"
#include "net/grpc_client.h"
#include "net/kms_v1beta1.pb-c.h"
#include "net/kms_v2.pb-c.h"
#include "proxy/kms_client_internal.h"
#include "proxy/metrics.h"

/* ---- v2 Status poller ---- */

static void poll_schedule(kms_client *c, uint64_t after_ns) {
    struct timeval tv = {(time_t)(after_ns / NS_PER_S), (suseconds_t)(after_ns % NS_PER_S / 1000)};
    event_add(c->poll_ev, &tv);
}

static void on_primed(evutil_socket_t fd, short what, void *arg) {
    kms_set *s = arg;
    if (s->primed) {
        s->primed(s->primed_arg);
    }
}

static void cycle_ended(kms_client *c) {
    if (!c->polled_once) {
        c->polled_once = true;
        if (--c->set->primed_left == 0) {
            event_active(c->set->primed_ev, 0, 0);
        }
    }
}

static void poll_failed(kms_client *c, const char *reason) {
    if (c->health != -1 || strcmp(c->last_error, reason) != 0) {
        char every[64];
        grpc_timeout_message(c->set->retry_interval_ns, every, sizeof(every));
        kmsc_log(c, "plugin unhealthy, retrying (every %s): %s", every + strlen("timeout after "),
                 reason);
    }
    c->health = -1;
    snprintf(c->last_error, sizeof(c->last_error), "%s", reason);
    secret_free(&c->seed);
    poll_schedule(c, c->set->retry_interval_ns);
    cycle_ended(c);
}

static void poll_ok(kms_client *c, str key_id, bool new_state) {
    char hash[KEY_ID_HASH_LEN];
    kmsc_hash_key_id(key_id, hash);
    if (new_state) {
        kmsc_log(c, "new write state: seed encrypted by the plugin under key_id %s%s", hash, "");
    } else if (c->health != 1) {
        kmsc_log(c, "plugin healthy, key_id %s%s", hash, "");
    }
    c->health = 1;
    c->last_error[0] = '\0';
    memcpy(c->key_id_hash, hash, sizeof(hash));
    c->state_until_ms = ep_clock_ms() + (int64_t)(c->set->validity_ns / 1000000u);
    poll_schedule(c, c->set->ok_interval_ns);
    cycle_ended(c);
}

/* Fills |out| with the Encrypt response's annotations as views. Returns 0 or EP_ERR_NOMEM. */
static int view_annotations(const V2__EncryptResponse *m, crypto_kmsv2_annotation **out) {
    *out = ep_calloc(m->n_annotations ? m->n_annotations : 1, sizeof(**out));
    if (!*out) {
        return EP_ERR_NOMEM;
    }
    for (size_t i = 0; i < m->n_annotations; i++) {
        (*out)[i].key = kmsc_bytes_str(m->annotations[i]->key);
        (*out)[i].value = kmsc_bytes_str(m->annotations[i]->value);
    }
    return 0;
}

static void on_seed_encrypted(const grpc_call_result *r, void *arg) {
    kms_client *c = arg;
    char reason[EP_ERR_MSG_MAX + 32];
    c->poll_call = NULL;
    kmsc_observe(c, "Encrypt", r->status, c->poll_started_ns);
    if (r->status != GRPC_STATUS_OK) {
        snprintf(reason, sizeof(reason), "Encrypt: %s: %s", grpc_status_name(r->status),
                 r->message);
        poll_failed(c, reason);
        return;
    }
    V2__EncryptResponse *m =
        v2__encrypt_response__unpack(&ep_pb_plain, r->response.len, r->response.ptr);
    crypto_kmsv2_annotation *anns = NULL;
    ep_err err = {{0}};
    int rv = !m ? EP_ERR_INVALID : view_annotations(m, &anns);
    if (rv == 0) {
        rv = crypto_kms_provider_set_v2_state(c->provider, secret_str(&c->seed),
                                              buf_str(&c->status_key_id), kmsc_bytes_str(m->key_id),
                                              kmsc_bytes_str(m->ciphertext), anns, m->n_annotations,
                                              c->set->validity_ns, &err);
    }
    ep_free(anns);
    if (m) {
        v2__encrypt_response__free_unpacked(m, &ep_pb_plain);
    }
    if (rv != 0) {
        snprintf(reason, sizeof(reason), "Encrypt: %s",
                 !m ? "malformed response from the plugin" : err.msg);
        poll_failed(c, reason);
        return;
    }
    secret_free(&c->seed);
    poll_ok(c, buf_str(&c->status_key_id), true);
}

/* A healthy Status with |key_id| and no state to extend: Encrypt a fresh seed. */
static void rotate(kms_client *c, str key_id) {
    uint8_t seed[CRYPTO_KMSV2_SEED_LEN];
    char uid[37];
    ep_err err = {{0}};
    buf_reset(&c->status_key_id);
    secret_free(&c->seed);
    if (crypto_random_bytes(seed, sizeof(seed)) != 0 || kmsc_make_uid(uid) != 0) {
        poll_failed(c, "cannot generate a seed: random generator failed");
        return;
    }
    int rv = secret_set(&c->seed, seed, sizeof(seed));
    explicit_bzero(seed, sizeof(seed));
    if (rv != 0 || buf_append_str(&c->status_key_id, key_id) != 0) {
        poll_failed(c, "out of memory");
        return;
    }
    V2__EncryptRequest m = V2__ENCRYPT_REQUEST__INIT;
    m.plaintext = kmsc_pb_bytes(secret_str(&c->seed));
    m.uid = uid;
    atomic_fetch_add(&kmsc_seed_encrypt_calls, 1);
    c->poll_started_ns = proxy_metrics_now_ns();
    if (kmsc_start_call(c, "Encrypt", &m.base, c->timeout_ns, on_seed_encrypted, c, &c->poll_call,
                        &err) != 0) {
        c->poll_call = NULL;
        poll_failed(c, err.msg);
    }
}

/* Checks a Status answer as the apiserver does (spec 1.6.3). Returns true when healthy;
 * otherwise |reason| says why. */
static bool status_healthy(kms_client *c, const V2__StatusResponse *m, char *reason, size_t len) {
    if (strcmp(m->healthz, "ok") != 0) {
        snprintf(reason, len, "got unexpected healthz status: %.100s", m->healthz);
        return false;
    }
    if (strcmp(m->version, "v2") != 0 && strcmp(m->version, "v2beta1") != 0) {
        snprintf(reason, len, "expected KMSv2 API version v2 or v2beta1, got %.64s", m->version);
        return false;
    }
    if (c->status_version && strcmp(c->status_version, m->version) != 0) {
        snprintf(reason, len, "KMSv2 API version changed from %s to %.64s", c->status_version,
                 m->version);
        return false;
    }
    if (m->key_id.len == 0 || m->key_id.len > CRYPTO_KMSV2_KEY_ID_MAX) {
        if (c->set->metrics != NULL) {
            str labels[] = {str_cstr(kmsc_client_name(c)),
                            m->key_id.len == 0 ? STR_LIT("empty") : STR_LIT("too_long")};
            ep_metrics_add(c->set->metrics, PM_INVALID_KEY_ID, labels, 1);
        }
        snprintf(reason, len, "failed to validate key id: keyID is %s",
                 m->key_id.len == 0 ? "empty" : "longer than 1024 bytes");
        return false;
    }
    if (!c->status_version && !(c->status_version = ep_strdup(m->version))) {
        snprintf(reason, len, "out of memory");
        return false;
    }
    return true;
}

static void on_status(const grpc_call_result *r, void *arg) {
    kms_client *c = arg;
    char reason[EP_ERR_MSG_MAX + 32];
    c->poll_call = NULL;
    kmsc_observe(c, "Status", r->status, c->poll_started_ns);
    if (r->status != GRPC_STATUS_OK) {
        snprintf(reason, sizeof(reason), "Status: %s: %s", grpc_status_name(r->status), r->message);
        poll_failed(c, reason);
        return;
    }
    V2__StatusResponse *m =
        v2__status_response__unpack(&ep_pb_plain, r->response.len, r->response.ptr);
    if (!m) {
        poll_failed(c, "Status: malformed response from the plugin");
        return;
    }
    if (!status_healthy(c, m, reason, sizeof(reason))) {
        poll_failed(c, reason);
    } else if (crypto_kms_provider_extend_v2_state(c->provider, kmsc_bytes_str(m->key_id),
                                                   c->set->validity_ns)) {
        poll_ok(c, kmsc_bytes_str(m->key_id), false);
    } else {
        rotate(c, kmsc_bytes_str(m->key_id));
    }
    v2__status_response__free_unpacked(m, &ep_pb_plain);
}

void kmsc_on_poll(evutil_socket_t fd, short what, void *arg) {
    kms_client *c = arg;
    V2__StatusRequest m = V2__STATUS_REQUEST__INIT;
    ep_err err = {{0}};
    if (c->poll_call) {
        return; /* a cycle is still running */
    }
    c->poll_started_ns = proxy_metrics_now_ns();
    if (kmsc_start_call(c, "Status", &m.base, c->timeout_ns, on_status, c, &c->poll_call, &err) !=
        0) {
        c->poll_call = NULL;
        poll_failed(c, err.msg);
    }
}

int kms_set_start_pollers(kms_set *s, kms_done_cb primed, void *arg) {
    s->primed = primed;
    s->primed_arg = arg;
    s->primed_ev = event_new(s->base, -1, 0, on_primed, s);
    if (!s->primed_ev) {
        return EP_ERR_NOMEM;
    }
    s->polling = true;
    s->primed_left = 1; /* held until every poller is scheduled */
    for (size_t i = 0; i < s->nclients; i++) {
        kms_client *c = &s->clients[i];
        if (c->api == 2) {
            s->primed_left++;
            poll_schedule(c, 0);
        }
    }
    if (--s->primed_left == 0) {
        event_active(s->primed_ev, 0, 0);
    }
    return 0;
}

void kms_set_intervals(kms_set *s, uint64_t ok_ns, uint64_t retry_ns, uint64_t validity_ns) {
    s->ok_interval_ns = ok_ns;
    s->retry_interval_ns = retry_ns;
    s->validity_ns = validity_ns;
}
