// SPDX-License-Identifier: MIT
/* netns: two test hosts joined by a shaped veth pair. */
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "netns.h"

static int sh(const char *fmt, const char *a, const char *b)
{
	char cmd[512];

	snprintf(cmd, sizeof(cmd), fmt, a, b);
	return system(cmd) == 0 ? 0 : -1;
}

bool netns_have_netem(void)
{
	int ret = system("ip netns add ferry-probe-netem 2>/dev/null && "
		"ip -n ferry-probe-netem link set lo up && "
		"tc -n ferry-probe-netem qdisc add dev lo root netem "
		"delay 1ms >/dev/null 2>&1");

	system("ip netns del ferry-probe-netem 2>/dev/null");
	return ret == 0;
}

static const char *const steps[] = {
	"ip netns add %1$s-a && ip netns add %1$s-b",
	"ip link add %1$sa netns %1$s-a type veth peer name %1$sb "
	"netns %1$s-b",
	"ip -n %1$s-a addr add " NETNS_ADDR_A "/24 dev %1$sa && "
	"ip -n %1$s-b addr add " NETNS_ADDR_B "/24 dev %1$sb",
	"ip -n %1$s-a link set %1$sa up && ip -n %1$s-b link set %1$sb up && "
	"ip -n %1$s-a link set lo up && ip -n %1$s-b link set lo up",
	"tc -n %1$s-a qdisc add dev %1$sa root %2$s && "
	"tc -n %1$s-b qdisc add dev %1$sb root %2$s",
};

int netns_setup(struct netns_pair *p, const char *shape, char *why,
		size_t len)
{
	snprintf(p->name, sizeof(p->name), "fy%d", (int)getpid() % 100000);
	netns_teardown(p);	/* a leftover of the same name */
	p->up = true;
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		char cmd[600];

		snprintf(cmd, sizeof(cmd), "%s >/dev/null 2>&1", steps[i]);
		if (sh(cmd, p->name, shape)) {
			snprintf(why, len, "network namespace set-up failed "
				 "at step %zu (%s)", i, shape);
			netns_teardown(p);
			return -1;
		}
	}
	return 0;
}

int netns_enter(const struct netns_pair *p, char side)
{
	char path[96];
	int fd, ret;

	snprintf(path, sizeof(path), "/run/netns/%s-%c", p->name, side);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ret = setns(fd, CLONE_NEWNET);
	close(fd);
	return ret;
}

int netns_link(const struct netns_pair *p, bool up)
{
	return sh("ip -n %1$s-a link set %1$sa %2$s >/dev/null 2>&1", p->name,
		  up ? "up" : "down");
}

void netns_teardown(struct netns_pair *p)
{
	sh("ip netns del %1$s-a >/dev/null 2>&1; "
	   "ip netns del %1$s-b >/dev/null 2>&1", p->name, "");
	p->up = false;
}
