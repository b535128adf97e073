/*
 * plugin_server: the KMS plugin's gRPC server on a unix socket (h2c with prior knowledge, as
 * the apiserver and the proxy connect), one event loop, unary calls only.
 */
#ifndef EP_KMSPLUGIN_PLUGIN_SERVER_H
#define EP_KMSPLUGIN_PLUGIN_SERVER_H

#include <sys/socket.h>
#include <sys/un.h>

#include <event2/event.h>

#include "common/err.h"
#include "kmsplugin/plugin_api.h"

/* Largest request message accepted (a DEK or seed wrapped is ~100 bytes). */
#define PLUGIN_SERVER_MAX_MESSAGE (64 * 1024)

typedef struct plugin_server plugin_server;

/* Parses an endpoint as the apiserver does (spec 5.1): "unix:///path/to.sock" is a socket
 * file; "unix:///@name" (or "unix://@name") is the Linux abstract socket "name". Fills |addr|
 * and |*len|. Returns 0 or EP_ERR_CONFIG naming the problem (another scheme, a relative path
 * such as unix://tmp/x.sock, a path too long for sun_path). */
int plugin_server_parse_endpoint(const char *endpoint, struct sockaddr_un *addr, socklen_t *len,
                                 ep_err *err);

/* Listens on |endpoint| and serves |api| (which must outlive the server) on |base|. A stale
 * socket file at the path is replaced; any other file there is refused. The socket file is
 * created mode 0600: whoever can connect can unwrap every DEK. Returns 0, EP_ERR_CONFIG,
 * EP_ERR_IO (bind/listen failed; message names the path) or EP_ERR_NOMEM. */
int plugin_server_new(struct event_base *base, const char *endpoint, const plugin_api *api,
                      plugin_server **out, ep_err *err);

/* Closes the listener and every connection, removes the socket file, frees. Never fails. */
void plugin_server_free(plugin_server *s);

#endif
