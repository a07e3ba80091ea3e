// SPDX-License-Identifier: MIT
/*
 * serve json: the region list a VMM sends, parsed strictly and for
 * exactly its shape:
 *
 *   [ { "base_host_virt_addr": N, "size": N, "offset": N,
 *       "page_size": N, "page_size_kib": N }, ... ]
 *
 * N a JSON integer from 0 to 2^64 - 1, written without sign, fraction or
 * exponent.  Members come in any order; a known one twice is refused;
 * page_size and page_size_kib may be missing (older VMMs); members of
 * other names are skipped, whatever JSON they hold, so a later VMM may
 * add some (as Firecracker added page_size).  The text is RFC 8259 JSON:
 * whitespace where it allows it, strings of valid UTF-8 with their
 * escapes (a key may be written "\u0073ize"), nothing after the list but
 * whitespace.  Nesting is bounded, the whole is bounded by what the
 * caller reads (FERRY_SERVE_MAX_JSON).
 *
 * Bytes are hostile: the parser reads none past len, and running out of
 * them is "incomplete" (-EAGAIN: the rest may be on its way), never an
 * error, so it can be called again on a longer buffer.
 */
#include <string.h>

#include "base/error.h"
#include "serve/serve.h"

/* Values nested in a skipped member: deeper is refused. */
#define JSON_MAX_DEPTH	16
#define JSON_KEY_MAX	32

struct cursor {
	const char *s;
	size_t len, pos;
};

static int bad(const struct cursor *c, const char *what)
{
	return ferry_fail(-EBADMSG, "region list: %s at byte %zu", what,
			  c->pos);
}

/* The next byte, or -EAGAIN at the end. */
static int peek(const struct cursor *c)
{
	return c->pos < c->len ? (unsigned char)c->s[c->pos] : -EAGAIN;
}

static int skip_ws(struct cursor *c)
{
	int ch;

	while ((ch = peek(c)) == ' ' || ch == '\t' || ch == '\n' || ch == '\r')
		c->pos++;
	return ch < 0 ? ch : 0;
}

/* The byte `want` after whitespace: 0, -EAGAIN, or -EBADMSG. */
static int expect(struct cursor *c, char want, const char *what)
{
	int ret = skip_ws(c);

	if (ret)
		return ret;
	if (c->s[c->pos] != want)
		return bad(c, what);
	c->pos++;
	return 0;
}

/* ---- strings ------------------------------------------------------------- */

static int hex4(struct cursor *c, unsigned int *v)
{
	*v = 0;
	for (int i = 0; i < 4; i++) {
		int ch = peek(c);

		if (ch < 0)
			return ch;
		if (ch >= '0' && ch <= '9')
			*v = *v << 4 | (unsigned int)(ch - '0');
		else if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
			*v = *v << 4 | (unsigned int)((ch | 0x20) - 'a' + 10);
		else
			return bad(c, "a \\u escape that is not 4 hex digits");
		c->pos++;
	}
	return 0;
}

/*
 * Append a code point to a key being decoded.  A long key stays unknown,
 * and so does one holding U+0000 ("size\u0000" is not "size").
 */
static void put_utf8(char *key, size_t *n, unsigned int cp)
{
	char b[4];
	size_t k;

	if (!cp) {
		*n = JSON_KEY_MAX;
		return;
	}
	if (cp < 0x80) {
		b[0] = (char)cp;
		k = 1;
	} else if (cp < 0x800) {
		b[0] = (char)(0xc0 | cp >> 6);
		b[1] = (char)(0x80 | (cp & 0x3f));
		k = 2;
	} else if (cp < 0x10000) {
		b[0] = (char)(0xe0 | cp >> 12);
		b[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		b[2] = (char)(0x80 | (cp & 0x3f));
		k = 3;
	} else {
		b[0] = (char)(0xf0 | cp >> 18);
		b[1] = (char)(0x80 | (cp >> 12 & 0x3f));
		b[2] = (char)(0x80 | (cp >> 6 & 0x3f));
		b[3] = (char)(0x80 | (cp & 0x3f));
		k = 4;
	}
	if (*n + k < JSON_KEY_MAX)
		memcpy(key + *n, b, k);
	*n += k;
}

/* After "\u": one code point, a surrogate pair whole or refused. */
static int unicode_escape(struct cursor *c, unsigned int *cp)
{
	unsigned int lo;
	int ret = hex4(c, cp);

	if (ret || *cp < 0xd800 || *cp > 0xdfff)
		return ret;
	if (*cp > 0xdbff)
		return bad(c, "a lone low surrogate");
	for (const char *p = "\\u"; *p; p++) {
		if ((ret = peek(c)) < 0)
			return ret;
		if (ret != *p)
			return bad(c, "a high surrogate without its low half");
		c->pos++;
	}
	if ((ret = hex4(c, &lo)))
		return ret;
	if (lo < 0xdc00 || lo > 0xdfff)
		return bad(c, "a high surrogate without its low half");
	*cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
	return 0;
}

static int escape(struct cursor *c, char *key, size_t *n)
{
	static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
	unsigned int cp;
	int ch = peek(c), ret;
	const char *e;

	if (ch < 0)
		return ch;
	c->pos++;
	if (ch == 'u') {
		if ((ret = unicode_escape(c, &cp)))
			return ret;
		put_utf8(key, n, cp);
		return 0;
	}
	e = ch ? strchr(from, ch) : NULL;
	if (!e) {
		c->pos--;
		return bad(c, "an unknown escape");
	}
	put_utf8(key, n, (unsigned char)to[e - from]);
	return 0;
}

/* How many continuation bytes a lead byte wants, and their first's range. */
static int utf8_lead(unsigned int b, unsigned int *lo, unsigned int *hi)
{
	*lo = 0x80;
	*hi = 0xbf;
	if (b >= 0xc2 && b <= 0xdf)
		return 1;
	if (b >= 0xe0 && b <= 0xef) {
		*lo = b == 0xe0 ? 0xa0 : 0x80;
		*hi = b == 0xed ? 0x9f : 0xbf;
		return 2;
	}
	if (b >= 0xf0 && b <= 0xf4) {
		*lo = b == 0xf0 ? 0x90 : 0x80;
		*hi = b == 0xf4 ? 0x8f : 0xbf;
		return 3;
	}
	return -1;
}

/* A raw multi-byte character, valid UTF-8 (copied into key). */
static int utf8_char(struct cursor *c, char *key, size_t *n)
{
	unsigned int lo, hi, b = (unsigned char)c->s[c->pos];
	int more = utf8_lead(b, &lo, &hi);

	if (more < 0)
		return bad(c, "a byte that is not UTF-8");
	for (int i = 1; i <= more; i++) {
		if (c->pos + (size_t)i >= c->len)
			return -EAGAIN;
		b = (unsigned char)c->s[c->pos + (size_t)i];
		if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xbf))
			return bad(c, "a byte that is not UTF-8");
	}
	for (int i = 0; i <= more; i++, c->pos++)
		if (*n + 1 < JSON_KEY_MAX)
			key[(*n)++] = c->s[c->pos];
		else
			(*n)++;
	return 0;
}

/*
 * A string (the opening quote next): decoded into key (NUL-terminated;
 * *n beyond JSON_KEY_MAX - 1 means it did not fit).
 */
static int string(struct cursor *c, char *key, size_t *n)
{
	int ch, ret;

	*n = 0;
	if ((ret = expect(c, '"', "a string expected")))
		return ret;
	while ((ch = peek(c)) != '"') {
		if (ch < 0)
			return ch;
		if (ch < 0x20)
			return bad(c, "a control character in a string");
		if (ch == '\\') {
			c->pos++;
			ret = escape(c, key, n);
		} else if (ch >= 0x80) {
			ret = utf8_char(c, key, n);
		} else {
			put_utf8(key, n, (unsigned int)ch);
			c->pos++;
		}
		if (ret)
			return ret;
	}
	c->pos++;
	key[*n < JSON_KEY_MAX ? *n : JSON_KEY_MAX - 1] = '\0';
	return 0;
}

/* ---- numbers ------------------------------------------------------------- */

static int digits(struct cursor *c, size_t *count)
{
	int ch;

	*count = 0;
	while ((ch = peek(c)) >= '0' && ch <= '9') {
		c->pos++;
		(*count)++;
	}
	return ch < 0 ? ch : 0;
}

/* Any JSON number; *whole says whether it was a plain unsigned integer. */
static int number(struct cursor *c, bool *whole)
{
	size_t start = c->pos, n;
	int ch = peek(c), ret;

	*whole = ch != '-';
	if (ch == '-')
		c->pos++;
	if ((ret = peek(c)) < 0)
		return ret;
	if (ret < '0' || ret > '9')
		return bad(c, "a number expected");
	if ((ret = digits(c, &n)))
		return ret;
	if (n > 1 && c->s[c->pos - n] == '0')
		return bad(c, "a number with a leading zero");
	if (peek(c) == '.') {
		c->pos++;
		if ((ret = digits(c, &n)) || !n)
			return ret ? ret : bad(c, "a fraction without digits");
		*whole = false;
	}
	if ((peek(c) | 0x20) == 'e') {
		c->pos++;
		if ((ch = peek(c)) == '+' || ch == '-')
			c->pos++;
		if ((ret = digits(c, &n)) || !n)
			return ret ? ret : bad(c, "an exponent without digits");
		*whole = false;
	}
	return c->pos > start ? 0 : bad(c, "a number expected");
}

/* A member that must be an unsigned 64-bit integer. */
static int integer(struct cursor *c, const char *name, uint64_t *v)
{
	size_t start;
	bool whole;
	int ret = skip_ws(c);

	if (ret)
		return ret;
	start = c->pos;
	if ((ret = number(c, &whole)))
		return ret;
	if (!whole)
		return ferry_fail(-EBADMSG, "region list: %s at byte %zu is "
				  "not an unsigned integer", name, start);
	*v = 0;
	for (size_t i = start; i < c->pos; i++) {
		unsigned int d = (unsigned int)(c->s[i] - '0');

		if (*v > (UINT64_MAX - d) / 10)
			return ferry_fail(-EBADMSG, "region list: %s at byte "
					  "%zu is past 2^64", name, start);
		*v = *v * 10 + d;
	}
	return 0;
}

/* ---- values skipped ------------------------------------------------------ */

static int value(struct cursor *c, int depth);

static int literal(struct cursor *c, const char *word)
{
	for (; *word; word++, c->pos++) {
		int ch = peek(c);

		if (ch < 0)
			return ch;
		if (ch != *word)
			return bad(c, "an unknown word");
	}
	return 0;
}

/* Just after an opening bracket: 1 when `close` follows (it is empty). */
static int empty(struct cursor *c, char close)
{
	int ret = skip_ws(c);

	if (ret)
		return ret;
	if (c->s[c->pos] != close)
		return 0;
	c->pos++;
	return 1;
}

/* After an item: ',' (0: another one comes) or `close` (1: the end). */
static int after_item(struct cursor *c, char close)
{
	int ret = empty(c, close);

	if (ret)
		return ret;
	return expect(c, ',', close == '}' ? "',' or '}' expected" :
		      "',' or ']' expected");
}

/* The elements of an array or the members of an object, '[' or '{' read. */
static int container(struct cursor *c, int depth, bool object)
{
	char close = object ? '}' : ']', key[JSON_KEY_MAX];
	size_t n;
	int ret = empty(c, close);

	while (!ret) {
		if (object && ((ret = string(c, key, &n)) ||
			       (ret = expect(c, ':', "':' expected"))))
			break;
		ret = value(c, depth + 1);
		if (!ret)
			ret = after_item(c, close);
	}
	return ret < 0 ? ret : 0;
}

static int value(struct cursor *c, int depth)
{
	char key[JSON_KEY_MAX];
	size_t n;
	bool whole;
	int ret = skip_ws(c);

	if (ret)
		return ret;
	if (depth > JSON_MAX_DEPTH)
		return bad(c, "values nested too deep");
	switch (c->s[c->pos]) {
	case '"':
		return string(c, key, &n);
	case '{':
	case '[':
		c->pos++;
		return container(c, depth, c->s[c->pos - 1] == '{');
	case 't':
		return literal(c, "true");
	case 'f':
		return literal(c, "false");
	case 'n':
		return literal(c, "null");
	default:
		return number(c, &whole);
	}
}

/* ---- the list ------------------------------------------------------------ */

static const struct {
	const char *name;
	unsigned int bit;
} fields[] = {
	{ "base_host_virt_addr", SERVE_HAS_BASE },
	{ "size", SERVE_HAS_SIZE },
	{ "offset", SERVE_HAS_OFFSET },
	{ "page_size", SERVE_HAS_PAGE_SIZE },
	{ "page_size_kib", SERVE_HAS_PAGE_KIB },
};

static uint64_t *field(struct serve_entry *e, unsigned int bit)
{
	switch (bit) {
	case SERVE_HAS_BASE:
		return &e->r.base_host_virt_addr;
	case SERVE_HAS_SIZE:
		return &e->r.size;
	case SERVE_HAS_OFFSET:
		return &e->r.offset;
	case SERVE_HAS_PAGE_SIZE:
		return &e->r.page_size;
	default:
		return &e->page_size_kib;
	}
}

static int member(struct cursor *c, struct serve_entry *e, unsigned int nr)
{
	char key[JSON_KEY_MAX];
	size_t n, at = c->pos;
	int ret;

	if ((ret = string(c, key, &n)) || (ret = expect(c, ':',
							"':' expected")))
		return ret;
	for (size_t i = 0; n < JSON_KEY_MAX &&
	     i < sizeof(fields) / sizeof(fields[0]); i++) {
		if (strcmp(key, fields[i].name))
			continue;
		if (e->has & fields[i].bit)
			return ferry_fail(-EBADMSG, "region list: region %u "
					  "gives %s twice (byte %zu)", nr,
					  key, at);
		e->has |= fields[i].bit;
		return integer(c, fields[i].name, field(e, fields[i].bit));
	}
	return value(c, 2);
}

static int entry(struct cursor *c, struct serve_entry *e, unsigned int nr)
{
	int ret;

	memset(e, 0, sizeof(*e));
	ret = expect(c, '{', "'{' expected (a region)");
	if (!ret)
		ret = empty(c, '}');
	while (!ret) {
		ret = member(c, e, nr);
		if (!ret)
			ret = after_item(c, '}');
	}
	return ret < 0 ? ret : 0;
}

static int entries(struct cursor *c, struct serve_list *l)
{
	int ret = 0;

	while (!ret) {
		if (l->nr == FERRY_SERVE_MAX_REGIONS)
			return ferry_fail(-EBADMSG, "region list: more than %d "
					  "regions", FERRY_SERVE_MAX_REGIONS);
		ret = entry(c, &l->e[l->nr], l->nr);
		if (!ret) {
			l->nr++;
			ret = after_item(c, ']');
		}
	}
	return ret < 0 ? ret : 0;
}

int serve_json_parse(const char *buf, size_t len, struct serve_list *l)
{
	struct cursor c = { .s = buf, .len = len };
	int ret;

	l->nr = 0;
	ret = expect(&c, '[', "'[' expected (a list of regions)");
	if (!ret)
		ret = empty(&c, ']');
	if (!ret)
		ret = entries(&c, l);
	if (ret < 0)
		return ret;
	ret = skip_ws(&c);
	if (ret == -EAGAIN)
		return 0;	/* nothing after the list */
	return ferry_fail(-EBADMSG, "region list: %zu bytes after its end "
			  "(byte %zu)", len - c.pos, c.pos);
}
