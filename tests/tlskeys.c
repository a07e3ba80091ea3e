// SPDX-License-Identifier: MIT
/* tlskeys: test keys and certificates, made with GnuTLS's own calls. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "tlskeys.h"

#define DAY	(24 * 3600)

struct signer {
	gnutls_x509_crt_t crt;
	gnutls_x509_privkey_t key;
};

static int write_datum(const char *path, const gnutls_datum_t *d)
{
	FILE *f = fopen(path, "w");
	int ret = f && fwrite(d->data, 1, d->size, f) == d->size ? 0 : -1;

	if (f)
		fclose(f);
	return ret;
}

static int write_psk(const char *path, const char *identity)
{
	unsigned char key[32];
	FILE *f = fopen(path, "w");

	if (!f || getrandom(key, sizeof(key), 0) != sizeof(key))
		return -1;
	fprintf(f, "%s:", identity);
	for (size_t i = 0; i < sizeof(key); i++)
		fprintf(f, "%02x", key[i]);
	fprintf(f, "\n");
	fclose(f);
	return chmod(path, 0600);
}

/* A certificate for dn, valid from `from` to `to`, signed by `by`. */
static int make_cert(struct signer *out, const char *dn, bool ca,
		     time_t from, time_t to, const struct signer *by)
{
	unsigned char serial[8];
	int ret;

	ret = gnutls_x509_privkey_init(&out->key);
	ret = ret ?: gnutls_x509_privkey_generate(out->key, GNUTLS_PK_ECDSA,
		GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0);
	ret = ret ?: gnutls_x509_crt_init(&out->crt);
	if (ret || getrandom(serial, sizeof(serial), 0) != sizeof(serial))
		return -1;
	serial[0] &= 0x7f;
	ret = gnutls_x509_crt_set_version(out->crt, 3);
	ret = ret ?: gnutls_x509_crt_set_serial(out->crt, serial, 8);
	ret = ret ?: gnutls_x509_crt_set_activation_time(out->crt, from);
	ret = ret ?: gnutls_x509_crt_set_expiration_time(out->crt, to);
	ret = ret ?: gnutls_x509_crt_set_dn(out->crt, dn, NULL);
	ret = ret ?: gnutls_x509_crt_set_key(out->crt, out->key);
	ret = ret ?: gnutls_x509_crt_set_basic_constraints(out->crt, ca, -1);
	ret = ret ?: gnutls_x509_crt_set_key_usage(out->crt, ca ?
		GNUTLS_KEY_KEY_CERT_SIGN : GNUTLS_KEY_DIGITAL_SIGNATURE);
	if (!ret && !ca)
		ret = gnutls_x509_crt_set_key_purpose_oid(out->crt,
			GNUTLS_KP_TLS_WWW_SERVER, 0) ?:
		      gnutls_x509_crt_set_key_purpose_oid(out->crt,
			GNUTLS_KP_TLS_WWW_CLIENT, 0);
	ret = ret ?: gnutls_x509_crt_sign2(out->crt, by ? by->crt : out->crt,
		by ? by->key : out->key, GNUTLS_DIG_SHA256, 0);
	return ret ? -1 : 0;
}

static int save(const struct signer *s, const char *cert, const char *key)
{
	gnutls_datum_t c = { 0 }, k = { 0 };
	int ret = -1;

	if (!gnutls_x509_crt_export2(s->crt, GNUTLS_X509_FMT_PEM, &c) &&
	    !gnutls_x509_privkey_export2(s->key, GNUTLS_X509_FMT_PEM, &k))
		ret = write_datum(cert, &c) || (key && write_datum(key, &k));
	gnutls_free(c.data);
	gnutls_free(k.data);
	return ret;
}

static void signer_free(struct signer *s)
{
	if (s->crt)
		gnutls_x509_crt_deinit(s->crt);
	if (s->key)
		gnutls_x509_privkey_deinit(s->key);
}

static void paths(struct tlskeys *k)
{
	snprintf(k->psk, sizeof(k->psk), "%s/psk", k->dir);
	snprintf(k->psk_other, sizeof(k->psk_other), "%s/psk2", k->dir);
	snprintf(k->ca, sizeof(k->ca), "%s/ca.pem", k->dir);
	snprintf(k->a_cert, sizeof(k->a_cert), "%s/a.pem", k->dir);
	snprintf(k->a_key, sizeof(k->a_key), "%s/a.key", k->dir);
	snprintf(k->b_cert, sizeof(k->b_cert), "%s/b.pem", k->dir);
	snprintf(k->b_key, sizeof(k->b_key), "%s/b.key", k->dir);
	snprintf(k->old_cert, sizeof(k->old_cert), "%s/old.pem", k->dir);
	snprintf(k->old_key, sizeof(k->old_key), "%s/old.key", k->dir);
	snprintf(k->rogue_cert, sizeof(k->rogue_cert), "%s/rogue.pem", k->dir);
	snprintf(k->rogue_key, sizeof(k->rogue_key), "%s/rogue.key", k->dir);
}

static int make_all(struct tlskeys *k)
{
	struct signer ca = { 0 }, rogue_ca = { 0 }, a = { 0 }, b = { 0 },
		      old = { 0 }, rogue = { 0 };
	time_t now = time(NULL);
	int ret;

	ret = write_psk(k->psk, "ferry-test") ||
	      write_psk(k->psk_other, "ferry-test") ||
	      make_cert(&ca, "CN=ferry test CA", true, now - DAY,
			now + 30 * DAY, NULL) ||
	      make_cert(&rogue_ca, "CN=rogue CA", true, now - DAY,
			now + 30 * DAY, NULL) ||
	      make_cert(&a, "CN=host a", false, now - DAY, now + DAY, &ca) ||
	      make_cert(&b, "CN=host b", false, now - DAY, now + DAY, &ca) ||
	      make_cert(&old, "CN=host old", false, now - 10 * DAY,
			now - 2 * DAY, &ca) ||
	      make_cert(&rogue, "CN=host a", false, now - DAY, now + DAY,
			&rogue_ca) ||
	      save(&ca, k->ca, NULL) || save(&a, k->a_cert, k->a_key) ||
	      save(&b, k->b_cert, k->b_key) ||
	      save(&old, k->old_cert, k->old_key) ||
	      save(&rogue, k->rogue_cert, k->rogue_key);
	signer_free(&ca);
	signer_free(&rogue_ca);
	signer_free(&a);
	signer_free(&b);
	signer_free(&old);
	signer_free(&rogue);
	return ret ? -1 : 0;
}

int tlskeys_make(struct tlskeys *k, char *why, size_t len)
{
	snprintf(k->dir, sizeof(k->dir), "/tmp/ferry-tls-XXXXXX");
	if (!mkdtemp(k->dir)) {
		snprintf(why, len, "mkdtemp: %s", strerror(errno));
		return -1;
	}
	paths(k);
	if (make_all(k)) {
		snprintf(why, len, "making test keys and certificates failed");
		tlskeys_remove(k);
		return -1;
	}
	return 0;
}

void tlskeys_remove(struct tlskeys *k)
{
	const char *files[] = { k->psk, k->psk_other, k->ca, k->a_cert,
		k->a_key, k->b_cert, k->b_key, k->old_cert, k->old_key,
		k->rogue_cert, k->rogue_key };

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		unlink(files[i]);
	rmdir(k->dir);
}

struct ferry_net_opts tlskeys_psk(const char *psk)
{
	return (struct ferry_net_opts){ .tls_psk_file = psk };
}

struct ferry_net_opts tlskeys_cert(const struct tlskeys *k, const char *cert,
				   const char *key)
{
	return (struct ferry_net_opts){ .tls_cert_file = cert,
		.tls_key_file = key, .tls_ca_file = k->ca };
}
