// SPDX-License-Identifier: MIT
/*
 * net tls: credentials (a pre-shared key, or a certificate with its key
 * and the CA that signs peers), and the TLS 1.3 handshake that opens
 * every channel before its hello (docs/security.md).
 *
 * Both peers authenticate: with a key, by proving they hold it (TLS 1.3
 * PSK with an ephemeral key exchange, so a key stolen later does not
 * open recorded traffic); with certificates, each side requires the
 * other's and checks it against its CA (signature, dates).  No other
 * TLS version, no session tickets (nothing to resume: sessions are
 * short and a ticket would be one more secret to keep).
 */
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <gnutls/x509.h>

#include "base/error.h"
#include "base/sys.h"
#include "net/sock.h"
#include "net/tls.h"

#define PSK_FILE_MAX	1024
#define PSK_KEY_MIN	16
#define PSK_KEY_MAX	64
#define PSK_ID_MAX	128

/*
 * AES-GCM first: GnuTLS otherwise may pick ChaCha20 here, which ran at
 * 0.25 GB/s against AES-GCM's 3.6 on this machine's AES instructions.
 */
#define PRIO_BASE	"NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:" \
			"+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305"
#define PRIO_PSK	PRIO_BASE ":-KX-ALL:+ECDHE-PSK"
#define PRIO_CERT	PRIO_BASE

struct net_tls {
	atomic_int refs;
	bool psk;
	char identity[PSK_ID_MAX + 1];
	uint8_t key[PSK_KEY_MAX];
	unsigned int key_len;
	gnutls_psk_client_credentials_t psk_client;
	gnutls_psk_server_credentials_t psk_server;
	gnutls_certificate_credentials_t cert;
	gnutls_priority_t prio;
};

/* ---- the key file ------------------------------------------------------- */

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int parse_hex(struct net_tls *t, const char *hex, const char *path)
{
	size_t len = strlen(hex);

	if (len % 2 || len / 2 < PSK_KEY_MIN || len / 2 > PSK_KEY_MAX)
		return ferry_fail(-EINVAL, "key file %s: want IDENTITY:HEXKEY "
				  "with %d to %d bytes of key in hex", path,
				  PSK_KEY_MIN, PSK_KEY_MAX);
	for (size_t i = 0; i < len; i += 2) {
		int hi = hex_digit(hex[i]), lo = hex_digit(hex[i + 1]);

		if (hi < 0 || lo < 0)
			return ferry_fail(-EINVAL, "key file %s: the key is "
					  "not hex", path);
		t->key[i / 2] = (uint8_t)(hi << 4 | lo);
	}
	t->key_len = (unsigned int)(len / 2);
	return 0;
}

/* A key readable by others is no secret: refuse it, as ssh does. */
static int read_key_file(const char *path, char *buf, size_t len)
{
	struct stat st;
	ssize_t n;
	int fd = sys_open(path, O_RDONLY);

	if (fd < 0)
		return ferry_fail(fd, "key file %s: %s", path, strerror(-fd));
	if (fstat(fd, &st) || (st.st_mode & 0077)) {
		close(fd);
		return ferry_fail(-EACCES, "key file %s: readable by others "
				  "than its owner (chmod 600 it)", path);
	}
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return ferry_fail(-errno, "key file %s: %s", path,
				  strerror(errno));
	buf[n] = '\0';
	buf[strcspn(buf, "\r\n")] = '\0';
	return 0;
}

static int load_psk_file(struct net_tls *t, const char *path)
{
	char text[PSK_FILE_MAX];
	char *colon;
	int ret = read_key_file(path, text, sizeof(text));

	if (ret)
		return ret;
	colon = strrchr(text, ':');
	if (!colon || colon == text || colon - text > PSK_ID_MAX)
		ret = ferry_fail(-EINVAL, "key file %s: want one line "
				 "IDENTITY:HEXKEY", path);
	if (!ret) {
		memcpy(t->identity, text, (size_t)(colon - text));
		t->identity[colon - text] = '\0';
		ret = parse_hex(t, colon + 1, path);
	}
	explicit_bzero(text, sizeof(text));
	return ret;
}

/* ---- credentials -------------------------------------------------------- */

/* The server's side of a key: ours, for our identity only. */
static int psk_lookup(gnutls_session_t s, const gnutls_datum_t *name,
		      gnutls_datum_t *key)
{
	const struct net_tls_link *link = gnutls_session_get_ptr(s);
	const struct net_tls *t = link->tls;

	if (name->size != strlen(t->identity) ||
	    memcmp(name->data, t->identity, name->size))
		return -1;
	key->data = gnutls_malloc(t->key_len);
	if (!key->data)
		return -1;
	memcpy(key->data, t->key, t->key_len);
	key->size = t->key_len;
	return 0;
}

static int gnutls_fail(int err, const char *what)
{
	return ferry_fail(-EINVAL, "%s: %s", what, gnutls_strerror(err));
}

static int load_psk(struct net_tls *t, const char *path)
{
	gnutls_datum_t key;
	int ret = load_psk_file(t, path);

	if (ret)
		return ret;
	t->psk = true;
	key = (gnutls_datum_t){ t->key, t->key_len };
	ret = gnutls_psk_allocate_client_credentials(&t->psk_client);
	if (!ret)
		ret = gnutls_psk_set_client_credentials2(t->psk_client,
			&(gnutls_datum_t){ (unsigned char *)t->identity,
			(unsigned int)strlen(t->identity) }, &key,
			GNUTLS_PSK_KEY_RAW);
	if (!ret)
		ret = gnutls_psk_allocate_server_credentials(&t->psk_server);
	if (ret)
		return gnutls_fail(ret, "pre-shared key credentials");
	gnutls_psk_set_server_credentials_function2(t->psk_server,
						    psk_lookup);
	return 0;
}

static int load_cert(struct net_tls *t, const struct ferry_net_opts *o)
{
	int ret;

	if (!o->tls_cert_file || !o->tls_key_file || !o->tls_ca_file)
		return ferry_fail(-EINVAL, "certificates need three files: "
				  "this side's certificate, its key, and the "
				  "CA that signs peers");
	ret = gnutls_certificate_allocate_credentials(&t->cert);
	if (ret)
		return gnutls_fail(ret, "certificate credentials");
	ret = gnutls_certificate_set_x509_key_file(t->cert, o->tls_cert_file,
			o->tls_key_file, GNUTLS_X509_FMT_PEM);
	if (ret < 0)
		return ferry_fail(-EINVAL, "certificate %s with key %s: %s",
				  o->tls_cert_file, o->tls_key_file,
				  gnutls_strerror(ret));
	ret = gnutls_certificate_set_x509_trust_file(t->cert, o->tls_ca_file,
						     GNUTLS_X509_FMT_PEM);
	if (ret <= 0)
		return ferry_fail(-EINVAL, "CA file %s: %s", o->tls_ca_file,
				  ret ? gnutls_strerror(ret) :
				  "no certificate in it");
	return 0;
}

static void tls_free(struct net_tls *t)
{
	if (t->psk_client)
		gnutls_psk_free_client_credentials(t->psk_client);
	if (t->psk_server)
		gnutls_psk_free_server_credentials(t->psk_server);
	if (t->cert)
		gnutls_certificate_free_credentials(t->cert);
	if (t->prio)
		gnutls_priority_deinit(t->prio);
	explicit_bzero(t->key, sizeof(t->key));
	free(t);
}

int net_tls_load(const struct ferry_net_opts *o, struct net_tls **out)
{
	bool cert = o->tls_cert_file || o->tls_key_file || o->tls_ca_file;
	struct net_tls *t;
	int ret;

	*out = NULL;
	if (!o->tls_psk_file && !cert)
		return 0;
	if (o->tls_psk_file && cert)
		return ferry_fail(-EINVAL, "TLS: give a pre-shared key or "
				  "certificates, not both");
	t = calloc(1, sizeof(*t));
	if (!t)
		return ferry_fail(-ENOMEM, "out of memory");
	atomic_init(&t->refs, 1);
	ret = cert ? load_cert(t, o) : load_psk(t, o->tls_psk_file);
	if (!ret && (ret = gnutls_priority_init(&t->prio, t->psk ? PRIO_PSK :
						PRIO_CERT, NULL)))
		ret = gnutls_fail(ret, "TLS 1.3 priorities");
	if (ret) {
		tls_free(t);
		return ret;
	}
	*out = t;
	return 0;
}

struct net_tls *net_tls_get(struct net_tls *t)
{
	atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
	return t;
}

void net_tls_put(struct net_tls *t)
{
	if (t && atomic_fetch_sub_explicit(&t->refs, 1,
					   memory_order_acq_rel) == 1)
		tls_free(t);
}

int net_tls_policy(const struct net_tls *t, const struct ferry_net_opts *o,
		   const char *what, const char *addr, bool local)
{
	if (t || local || o->insecure)
		return 0;
	return ferry_fail(-EPERM, "%s %s in the clear: it is not loopback, so "
			  "anyone who reaches it could %s; give a pre-shared "
			  "key or certificates (TLS), or say it is meant "
			  "(insecure)", what, addr, strcmp(what, "listening on") ?
			  "read the guest's memory" : "push a VM into it");
}

const char *net_tls_kind(const struct net_tls *t)
{
	return t->psk ? "key" : "certificate";
}

/* ---- the transport: our socket under GnuTLS ----------------------------- */

/* Keeps the first bytes: a peer that answers in the clear is named so. */
static void link_keep_first(struct net_tls_link *link, const void *buf,
			    ssize_t n)
{
	for (ssize_t i = 0; i < n && link->nr_first < sizeof(link->first);
	     i++)
		link->first[link->nr_first++] = ((const uint8_t *)buf)[i];
}

static ssize_t link_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	struct net_tls_link *link = ptr;
	ssize_t n;

	if (!link->rbuf) {	/* the handshake: no read ahead yet */
		do {
			n = recv(link->fd, buf, len, 0);
		} while (n < 0 && errno == EINTR);
		if (n < 0)
			gnutls_transport_set_errno(link->session, errno);
		link_keep_first(link, buf, n);
		return n;
	}
	if (link->rpos == link->rlen) {
		do {
			n = recv(link->fd, link->rbuf, NET_TLS_BUF, 0);
		} while (n < 0 && errno == EINTR);
		if (n <= 0) {
			if (n < 0)
				gnutls_transport_set_errno(link->session,
							   errno);
			return n;
		}
		link->rpos = 0;
		link->rlen = (size_t)n;
	}
	n = (ssize_t)(link->rlen - link->rpos < len ? link->rlen - link->rpos :
						     len);
	memcpy(buf, link->rbuf + link->rpos, (size_t)n);
	link->rpos += (size_t)n;
	link_keep_first(link, buf, n);
	return n;
}

int net_tls_link_buffers(struct net_tls_link *link)
{
	link->rbuf = malloc(NET_TLS_BUF);
	link->wbuf = malloc(NET_TLS_BUF);
	return link->rbuf && link->wbuf ? 0 : -ENOMEM;
}

bool net_tls_link_buffered(const struct net_tls_link *link)
{
	return link->rpos < link->rlen;
}

/* All of what is held, or -errno. */
static int link_write_held(struct net_tls_link *link)
{
	size_t done = 0;
	int ret = 0;

	while (done < link->wlen && !ret) {
		ssize_t n = send(link->fd, link->wbuf + done,
				 link->wlen - done, MSG_NOSIGNAL);

		if (n >= 0)
			done += (size_t)n;
		else if (errno != EINTR)
			ret = -errno;
	}
	link->wlen = 0;
	return ret;
}

static ssize_t link_push(gnutls_transport_ptr_t ptr, const giovec_t *iov,
			 int iovcnt)
{
	struct net_tls_link *link = ptr;
	struct msghdr msg = { .msg_iov = (struct iovec *)iov,
			      .msg_iovlen = (size_t)iovcnt };
	size_t total = 0;
	ssize_t n;
	int ret;

	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (link->corked && total <= NET_TLS_BUF) {
		if (link->wlen + total > NET_TLS_BUF &&
		    (ret = link_write_held(link))) {
			gnutls_transport_set_errno(link->session, -ret);
			return -1;
		}
		for (int i = 0; i < iovcnt; i++) {
			memcpy(link->wbuf + link->wlen, iov[i].iov_base,
			       iov[i].iov_len);
			link->wlen += iov[i].iov_len;
		}
		return (ssize_t)total;
	}
	do {
		n = sendmsg(link->fd, &msg, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		gnutls_transport_set_errno(link->session, errno);
	return n;
}

void net_tls_link_cork(struct net_tls_link *link)
{
	link->corked = true;
}

int net_tls_link_flush(struct net_tls_link *link)
{
	link->corked = false;
	return link_write_held(link);
}

static int link_pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
	struct net_tls_link *link = ptr;
	struct pollfd pfd = { link->fd, POLLIN, 0 };

	if (net_tls_link_buffered(link))
		return 1;
	return poll(&pfd, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int)ms);
}

static int link_init(struct net_tls_link *link, struct net_tls *t,
		     bool server)
{
	gnutls_session_t s;
	int ret = gnutls_init(&s, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) |
			      GNUTLS_NO_TICKETS);

	if (ret)
		return gnutls_fail(ret, "TLS session");
	link->session = s;
	gnutls_session_set_ptr(s, link);
	gnutls_transport_set_ptr(s, link);
	gnutls_transport_set_pull_function(s, link_pull);
	gnutls_transport_set_vec_push_function(s, link_push);
	gnutls_transport_set_pull_timeout_function(s, link_pull_timeout);
	gnutls_handshake_set_timeout(s, GNUTLS_INDEFINITE_TIMEOUT);
	ret = gnutls_priority_set(s, t->prio);
	if (!ret && t->psk)
		ret = gnutls_credentials_set(s, GNUTLS_CRD_PSK, server ?
			(void *)t->psk_server : (void *)t->psk_client);
	if (!ret && !t->psk)
		ret = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE,
					     t->cert);
	if (ret)
		return gnutls_fail(ret, "TLS session");
	/*
	 * A server that names its CA makes a client with a certificate of
	 * another CA send none at all; without the name it sends what it
	 * has, and the refusal can say what is wrong with it.
	 */
	if (!t->psk && server) {
		gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
		gnutls_certificate_send_x509_rdn_sequence(s, 1);
	}
	if (!t->psk)
		gnutls_session_set_verify_cert(s, NULL, 0);
	return 0;
}

void net_tls_link_free(struct net_tls_link *link)
{
	if (!link)
		return;
	if (link->session)
		gnutls_deinit(link->session);
	net_tls_put(link->tls);
	free(link->rbuf);
	free(link->wbuf);
	free(link);
}

int net_conn_tls(struct net_conn *c, struct net_tls *t, bool server)
{
	struct net_tls_link *link = calloc(1, sizeof(*link));
	int ret;

	if (!link)
		return ferry_fail(-ENOMEM, "out of memory");
	link->fd = c->fd;
	link->tls = net_tls_get(t);
	ret = link_init(link, t, server);
	if (ret) {
		net_tls_link_free(link);
		return ret;
	}
	c->link = link;
	return 0;
}

/* ---- the handshake ------------------------------------------------------ */

/* GnuTLS gives up after a record header: 5 bytes may be all it read. */
static bool answered_in_clear(const struct net_tls_link *link)
{
	return link->nr_first >= 5 &&
	       !memcmp(link->first, "FERRYACK", link->nr_first);
}

static int verify_fail(struct net_tls_link *link, const char *peer)
{
	gnutls_datum_t text = { 0 };
	unsigned int status = gnutls_session_get_verify_cert_status(
		link->session);
	int ret;

	gnutls_certificate_verification_status_print(status,
		GNUTLS_CRT_X509, &text, 0);
	ret = ferry_fail(-EACCES, "%s: TLS: its certificate is refused: %s",
			 peer, text.data ? (char *)text.data : "not trusted");
	gnutls_free(text.data);
	return ret;
}

/* Why a handshake failed, from this side's view. */
static int handshake_fail(struct net_tls_link *link, int err,
			  const char *peer)
{
	if (answered_in_clear(link))
		return ferry_fail(-EPROTO, "%s answered in the clear: it "
				  "listens without TLS (no key or "
				  "certificate there)", peer);
	switch (err) {
	case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
		return verify_fail(link, peer);
	case GNUTLS_E_FATAL_ALERT_RECEIVED:
		return ferry_fail(-EACCES, "%s refused the TLS handshake: %s "
				  "(a wrong %s?)", peer,
				  gnutls_alert_get_name(gnutls_alert_get(
					  link->session)),
				  net_tls_kind(link->tls));
	case GNUTLS_E_PREMATURE_TERMINATION:
	case GNUTLS_E_PULL_ERROR:
	case GNUTLS_E_PUSH_ERROR:
		return ferry_fail(-ECONNRESET, "%s closed the connection in "
				  "the TLS handshake (it refused this %s, "
				  "or wants none?)", peer,
				  net_tls_kind(link->tls));
	case GNUTLS_E_UNEXPECTED_PACKET_LENGTH:
	case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
	case GNUTLS_E_UNEXPECTED_PACKET:
		return ferry_fail(-EPROTO, "%s does not speak TLS 1.3: %s",
				  peer, gnutls_strerror(err));
	default:
		return ferry_fail(-EACCES, "%s: TLS handshake: %s (a wrong "
				  "%s?)", peer, gnutls_strerror(err),
				  net_tls_kind(link->tls));
	}
}

int net_conn_handshake(struct net_conn *c, const char *peer)
{
	int ret;

	do {
		ret = gnutls_handshake(c->link->session);
	} while (ret < 0 && !gnutls_error_is_fatal(ret) &&
		 ret != GNUTLS_E_AGAIN);
	if (!ret)
		return 0;
	if (ret == GNUTLS_E_AGAIN)
		return -EAGAIN;
	/* Tell the peer, so that it too has a reason. */
	gnutls_alert_send_appropriate(c->link->session, ret);
	return handshake_fail(c->link, ret, peer);
}

short net_conn_events(const struct net_conn *c)
{
	return c->link && gnutls_record_get_direction(c->link->session) ?
	       POLLOUT : POLLIN;
}

int net_conn_handshake_by(struct net_conn *c, const char *peer,
			  int64_t deadline)
{
	int ret;

	while ((ret = net_conn_handshake(c, peer)) == -EAGAIN) {
		ret = net_wait_fd(c->fd, net_conn_events(c), deadline);
		if (ret == -ETIMEDOUT)
			return ferry_fail(ret, "%s: no TLS handshake in time "
					  "(does it listen with TLS?)", peer);
		if (ret)
			return ferry_fail(ret, "%s: TLS handshake: %s", peer,
					  strerror(-ret));
	}
	return ret;
}

static void cert_subject(gnutls_session_t s, char *buf, size_t len)
{
	unsigned int n = 0;
	const gnutls_datum_t *certs = gnutls_certificate_get_peers(s, &n);
	gnutls_x509_crt_t crt;
	size_t size = len;

	snprintf(buf, len, "?");
	if (!n || gnutls_x509_crt_init(&crt))
		return;
	if (!gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER))
		gnutls_x509_crt_get_dn(crt, buf, &size);
	gnutls_x509_crt_deinit(crt);
}

void net_conn_auth(const struct net_conn *c, char *buf, size_t len)
{
	char who[FERRY_NET_AUTH_MAX];

	if (!c->link) {
		snprintf(buf, len, "plain");
		return;
	}
	if (c->link->tls->psk) {
		snprintf(buf, len, "TLS 1.3, key %s", c->link->tls->identity);
		return;
	}
	cert_subject(c->link->session, who, sizeof(who));
	snprintf(buf, len, "TLS 1.3, certificate %s", who);
}

/* ---- small transfers ---------------------------------------------------- */

int net_tls_errno(int err, int transport_errno)
{
	switch (err) {
	case GNUTLS_E_AGAIN:
		return -ETIMEDOUT;
	case GNUTLS_E_PUSH_ERROR:
	case GNUTLS_E_PULL_ERROR:
		return transport_errno ? -transport_errno : -EPIPE;
	case GNUTLS_E_PREMATURE_TERMINATION:
		return -ECONNRESET;
	case GNUTLS_E_FATAL_ALERT_RECEIVED:
		return -EACCES;
	default:
		return -EBADMSG;
	}
}

ssize_t net_conn_read(struct net_conn *c, void *buf, size_t len)
{
	ssize_t n;

	if (!c->link)
		return sys_ssize(recv(c->fd, buf, len, 0));
	do {
		n = gnutls_record_recv(c->link->session, buf, len);
	} while (n < 0 && n != GNUTLS_E_AGAIN && !gnutls_error_is_fatal(n));
	if (n == GNUTLS_E_AGAIN)
		return -EAGAIN;
	if (n == GNUTLS_E_PREMATURE_TERMINATION)
		return 0;
	return n < 0 ? net_tls_errno((int)n, errno) : n;
}

static ssize_t conn_write(struct net_conn *c, const void *buf, size_t len)
{
	ssize_t n;

	if (!c->link)
		return sys_ssize(send(c->fd, buf, len, MSG_NOSIGNAL));
	n = gnutls_record_send(c->link->session, buf, len);
	if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
		return -EAGAIN;
	return n < 0 ? net_tls_errno((int)n, errno) : n;
}

/* Bytes GnuTLS has already decrypted need no wait for the socket. */
static int conn_wait(struct net_conn *c, bool out, int64_t deadline)
{
	if (!out && c->link &&
	    (gnutls_record_check_pending(c->link->session) ||
	     net_tls_link_buffered(c->link)))
		return 0;
	return net_wait_fd(c->fd, out ? POLLOUT : POLLIN, deadline);
}

int net_conn_xfer(struct net_conn *c, void *buf, size_t len, bool out,
		  int64_t deadline)
{
	size_t done = 0;
	int ret = 0;

	while (done < len && !ret) {
		ssize_t n = out ? conn_write(c, (char *)buf + done, len - done)
				: net_conn_read(c, (char *)buf + done,
						len - done);

		if (n > 0)
			done += (size_t)n;
		else if (!n)
			ret = -ECONNRESET;
		else if (n == -EAGAIN)
			ret = conn_wait(c, out, deadline);
		else if (n != -EINTR)
			ret = (int)n;
	}
	return ret;
}

const char *net_conn_alert(const struct net_conn *c)
{
	return c->link ? gnutls_alert_get_name(gnutls_alert_get(
		c->link->session)) : "?";
}

void net_conn_close(struct net_conn *c)
{
	net_tls_link_free(c->link);
	if (c->fd >= 0)
		close(c->fd);
	*c = net_conn_plain(-1);
}
