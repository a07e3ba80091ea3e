// SPDX-License-Identifier: MIT
/*
 * workload_spec: "NAME,opt=value,..." into a struct workload, and the
 * fingerprint that says whether two machines run the same workload.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "ferry/error.h"
#include "le.h"
#include "workload.h"

static const char *const kind_names[WL_KIND_COUNT] = {
	[WL_IDLE] = "idle",
	[WL_SEQDIRTY] = "seqdirty",
	[WL_RANDOM] = "random",
	[WL_HOTCOLD] = "hotcold",
	[WL_KV] = "kv",
};

/* kv is mostly gets, like the caches it stands for; the rest mostly write. */
static const unsigned int default_read_pct[WL_KIND_COUNT] = {
	[WL_IDLE] = 0,
	[WL_SEQDIRTY] = 20,
	[WL_RANDOM] = 20,
	[WL_HOTCOLD] = 20,
	[WL_KV] = 90,
};

static const char help[] =
	"workloads (--workload NAME[,option=value...]):\n"
	"  seqdirty  writes every cell of its slice in order, round and round\n"
	"  random    writes uniformly random cells of its slice\n"
	"  hotcold   most writes go to a small hot set\n"
	"  kv        key-value store: gets and puts of 4-64 KiB values,\n"
	"            popular keys more often\n"
	"  idle      touches nothing; each step is a 1 ms timer tick\n"
	"options:\n"
	"  ws=SIZE     working set, split evenly between the vCPUs\n"
	"              (default: all of memory)\n"
	"  rate=SIZE   cap on bytes written per second by the whole VM\n"
	"              (default: none)\n"
	"  read=PCT    share of steps that read and check cells instead of\n"
	"              writing (default 20; kv 90)\n"
	"  hot=PCT     hotcold: size of the hot set in % of the slice (10)\n"
	"  hotw=PCT    hotcold: share of writes that go to it (90)\n"
	"power events (at most 16; S counts the calling vCPU's steps):\n"
	"  off=V@S     vCPU V calls CPU_OFF at its step S\n"
	"  suspend=V@S vCPU V calls CPU_SUSPEND at its step S\n"
	"  on=V@S      vCPU 0 calls CPU_ON(V) at its step S, and again on\n"
	"              every power change while V is still on (vCPU 0's\n"
	"              later events wait for it)\n"
	"  wake=V@S    vCPU 0 sends V a wake-up at its step S\n"
	"  reset=S     vCPU 0 calls SYSTEM_RESET at its step S\n"
	"  sysoff=S    vCPU 0 calls SYSTEM_OFF at its step S\n"
	"example: random,ws=256M,rate=200M,off=1@50000,on=1@90000\n";

const char *workload_help(void)
{
	return help;
}

static int parse_u64(const char *text, uint64_t *out, const char **end)
{
	char *stop;

	if (*text < '0' || *text > '9')
		return -EINVAL;
	errno = 0;
	*out = strtoull(text, &stop, 10);
	if (errno)
		return -EINVAL;
	*end = stop;
	return 0;
}

static uint64_t size_unit(char c)
{
	switch (c) {
	case 'k': case 'K': return 1ULL << 10;
	case 'm': case 'M': return 1ULL << 20;
	case 'g': case 'G': return 1ULL << 30;
	case 't': case 'T': return 1ULL << 40;
	default: return 0;
	}
}

/* "256M", "1G", "4096", "64KiB", and for rates "200M/s". */
static int parse_size(const char *text, uint64_t *out)
{
	uint64_t v, unit;
	const char *p;

	if (parse_u64(text, &v, &p))
		return -EINVAL;
	unit = size_unit(*p);
	if (unit) {
		p++;
		if (p[0] == 'i' && p[1] == 'B')
			p += 2;
	} else {
		unit = 1;
	}
	if (*p == 'B')
		p++;
	if (strcmp(p, "") && strcmp(p, "/s"))
		return -EINVAL;
	if (v > UINT64_MAX / unit)
		return -EINVAL;
	*out = v * unit;
	return 0;
}

static int parse_pct(const char *text, unsigned int *out)
{
	uint64_t v;
	const char *end;

	if (parse_u64(text, &v, &end) || (*end && strcmp(end, "%")) || v > 100)
		return -EINVAL;
	*out = (unsigned int)v;
	return 0;
}

/* "V@S" or, with no vCPU (vcpu NULL), "S". */
static int parse_event_at(const char *text, unsigned int *vcpu,
			  uint64_t *step)
{
	const char *p = text;
	uint64_t v = 0;

	if (vcpu) {
		if (parse_u64(p, &v, &p) || *p != '@' ||
		    v >= WL_MAX_VCPUS)
			return -EINVAL;
		p++;
		*vcpu = (unsigned int)v;
	}
	if (parse_u64(p, step, &p) || *p)
		return -EINVAL;
	return 0;
}

static const char *const event_names[WL_EV_KIND_COUNT] = {
	[WL_EV_OFF] = "off",
	[WL_EV_SUSPEND] = "suspend",
	[WL_EV_ON] = "on",
	[WL_EV_WAKE] = "wake",
	[WL_EV_RESET] = "reset",
	[WL_EV_SYSOFF] = "sysoff",
};

static int add_event(struct workload *wl, enum wl_event_kind kind,
		     const char *value)
{
	bool self = kind == WL_EV_OFF || kind == WL_EV_SUSPEND;
	bool targeted = self || kind == WL_EV_ON || kind == WL_EV_WAKE;
	struct wl_event ev = { .kind = kind };

	if (wl->nr_events == WL_MAX_EVENTS)
		return ferry_error_set(-EINVAL, "more than %d power events",
				       WL_MAX_EVENTS);
	if (parse_event_at(value, targeted ? &ev.target : NULL, &ev.step))
		return ferry_error_set(-EINVAL, "power event '%s=%s': want %s",
				       event_names[kind], value,
				       targeted ? "VCPU@STEP" : "STEP");
	ev.caller = self ? ev.target : 0;
	wl->events[wl->nr_events++] = ev;
	return 0;
}

static int set_option(struct workload *wl, const char *key, const char *val)
{
	int ret = -ENOENT;

	if (!strcmp(key, "ws"))
		ret = parse_size(val, &wl->ws_bytes);
	else if (!strcmp(key, "rate"))
		ret = parse_size(val, &wl->rate);
	else if (!strcmp(key, "read"))
		ret = parse_pct(val, &wl->read_pct);
	else if (!strcmp(key, "hot"))
		ret = parse_pct(val, &wl->hot_pct);
	else if (!strcmp(key, "hotw"))
		ret = parse_pct(val, &wl->hotw_pct);
	if (ret == -EINVAL)
		return ferry_error_set(ret, "workload option %s=%s: bad value",
				       key, val);
	return ret;
}

static int parse_option(struct workload *wl, char *token)
{
	char *val = strchr(token, '=');
	int ret;

	if (!val)
		return ferry_error_set(-EINVAL, "workload option '%s' has no "
				       "value (option=value)", token);
	*val++ = '\0';
	ret = set_option(wl, token, val);
	if (ret != -ENOENT)
		return ret;
	for (int k = 0; k < WL_EV_KIND_COUNT; k++)
		if (!strcmp(token, event_names[k]))
			return add_event(wl, (enum wl_event_kind)k, val);
	return ferry_error_set(-EINVAL, "unknown workload option '%s' (ws, "
			       "rate, read, hot, hotw, off, suspend, on, wake, "
			       "reset, sysoff)", token);
}

static int parse_kind(const char *name, struct workload *wl)
{
	if (!name[0])
		return ferry_error_set(-EINVAL, "empty workload spec");
	for (int k = 0; k < WL_KIND_COUNT; k++) {
		if (!strcmp(name, kind_names[k])) {
			wl->kind = (enum wl_kind)k;
			wl->read_pct = default_read_pct[k];
			return 0;
		}
	}
	return ferry_error_set(-EINVAL, "unknown workload '%s' (seqdirty, "
			       "random, hotcold, kv, idle)", name);
}

int workload_parse(const char *spec, struct workload *wl)
{
	char buf[WL_SPEC_MAX + 1], *rest = buf, *token;
	int ret;

	if (strlen(spec) > WL_SPEC_MAX)
		return ferry_error_set(-EINVAL,
				       "workload spec longer than %d bytes",
				       WL_SPEC_MAX);
	memset(wl, 0, sizeof(*wl));
	wl->hot_pct = 10;
	wl->hotw_pct = 90;
	strcpy(buf, spec);
	ret = parse_kind(strsep(&rest, ","), wl);
	while (!ret && (token = strsep(&rest, ",")))
		ret = parse_option(wl, token);
	if (!ret && wl->kind == WL_HOTCOLD && wl->hot_pct == 0)
		ret = ferry_error_set(-EINVAL, "hotcold needs hot=1..100");
	return ret;
}

int workload_check_vcpus(const struct workload *wl, unsigned int nr_vcpus)
{
	for (unsigned int i = 0; i < wl->nr_events; i++) {
		const struct wl_event *ev = &wl->events[i];

		if (ev->target >= nr_vcpus)
			return ferry_error_set(-EINVAL, "power event %s names "
					       "vCPU %u of %u",
					       event_names[ev->kind],
					       ev->target, nr_vcpus);
		if ((ev->kind == WL_EV_ON || ev->kind == WL_EV_WAKE) &&
		    ev->target == 0)
			return ferry_error_set(-EINVAL, "%s=0@...: vCPU 0 "
					       "makes that call, not on itself",
					       event_names[ev->kind]);
	}
	return 0;
}

int workload_layout(struct workload *wl, unsigned int nr_vcpus,
		    uint64_t nr_cells, uint64_t seed)
{
	uint64_t ws = wl->ws_bytes ? wl->ws_bytes >> CELL_SHIFT : nr_cells;
	int ret = workload_check_vcpus(wl, nr_vcpus);

	if (ret)
		return ret;
	if (ws > nr_cells)
		return ferry_error_set(-EINVAL, "working set of %llu MiB is "
				       "larger than guest memory (%llu MiB)",
				       (unsigned long long)(ws >> 8),
				       (unsigned long long)(nr_cells >> 8));
	if (wl->kind != WL_IDLE && ws < nr_vcpus)
		return ferry_error_set(-EINVAL, "working set of %llu cells "
				       "cannot give each of %u vCPUs a 4 KiB "
				       "cell", (unsigned long long)ws,
				       nr_vcpus);
	wl->nr_vcpus = nr_vcpus;
	wl->ws_cells = ws;
	wl->seed = seed;
	return 0;
}

/*
 * Everything that decides what lands in memory, and nothing that only
 * decides when (the rate cap): two machines with the same fingerprint
 * write the same cells with the same versions for the same step counts.
 */
uint64_t workload_fingerprint(const struct workload *wl, uint64_t nr_cells)
{
	uint8_t buf[64 + WL_MAX_EVENTS * 16], *p = buf;

	le32_store(p, wl->kind);
	le32_store(p + 4, wl->nr_vcpus);
	le64_store(p + 8, wl->seed);
	le64_store(p + 16, nr_cells);
	le64_store(p + 24, wl->ws_cells);
	le32_store(p + 32, wl->read_pct);
	le32_store(p + 36, wl->hot_pct);
	le32_store(p + 40, wl->hotw_pct);
	le32_store(p + 44, wl->nr_events);
	p += 48;
	for (unsigned int i = 0; i < wl->nr_events; i++, p += 16) {
		le64_store(p, wl->events[i].step);
		le32_store(p + 8, wl->events[i].kind);
		le32_store(p + 12, wl->events[i].target);
	}
	return XXH3_64bits(buf, (size_t)(p - buf));
}
